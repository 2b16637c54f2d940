import sys

from bench import ann, mf, serving

which = sys.argv[1:] or ["mf", "ann", "serving"]
for name, module in (("mf", mf), ("ann", ann), ("serving", serving)):
    if name in which:
        module.run()
