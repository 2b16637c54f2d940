import sys

from bench import ann, mf, scale, serving

# `scale` is long (about an hour and more) and takes its own options: run it on its own.
if sys.argv[1:2] == ["scale"]:
    scale.run(sys.argv[2:])
    sys.exit(0)
which = sys.argv[1:] or ["mf", "ann", "serving"]
for name, module in (("mf", mf), ("ann", ann), ("serving", serving)):
    if name in which:
        module.run()
