import sys

from bench import ann, determinism, gate, mf, mf_memory, scale, serving, sweep

# `mf`, `ann`, `serving` and `scale` take their own options (`scale` is long: an hour and more; run it on its own).
if sys.argv[1:2] == ["scale"]:
    scale.run(sys.argv[2:])
    sys.exit(0)
if sys.argv[1:2] in (["gate"], ["determinism"], ["sweep"]):    # bench/gate.py, determinism.py, sweep.py
    {"gate": gate, "determinism": determinism, "sweep": sweep}[sys.argv[1]].run(sys.argv[2:])
    sys.exit(0)
if sys.argv[1:2] == ["mf-memory"]:     # on a finished run's Transform output (bench/mf_memory.py)
    mf_memory.run(sys.argv[2:])
    sys.exit(0)
if sys.argv[1:2] in (["mf"], ["ann"], ["serving"]) and len(sys.argv) > 2:
    {"mf": mf, "ann": ann, "serving": serving}[sys.argv[1]].run(sys.argv[2:])
    sys.exit(0)
which = sys.argv[1:] or ["mf", "ann", "serving"]
for name, module in (("mf", mf), ("ann", ann), ("serving", serving)):
    if name in which:
        module.run([])
