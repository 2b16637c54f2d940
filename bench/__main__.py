import sys

from bench import (
    ann,
    determinism,
    explorer,
    finetune,
    gate,
    itemside,
    mf,
    mf_memory,
    quality,
    report,
    scale,
    serving,
    sweep,
)

# Benchmarks that take their own options. `scale` is long (an hour and more: run it on its own);
# `mf-memory` reads a finished run's Transform output.
OWN_OPTIONS = {
    "scale": scale,
    "mf-memory": mf_memory,
    "gate": gate,
    "determinism": determinism,
    "sweep": sweep,
    "quality": quality,
    "finetune": finetune,
    "report": report,
    "explorer": explorer,
    "itemside": itemside,
}
if sys.argv[1:2] and sys.argv[1] in OWN_OPTIONS:
    OWN_OPTIONS[sys.argv[1]].run(sys.argv[2:])
    sys.exit(0)
if sys.argv[1:2] in (["mf"], ["ann"], ["serving"]) and len(sys.argv) > 2:
    {"mf": mf, "ann": ann, "serving": serving}[sys.argv[1]].run(sys.argv[2:])
    sys.exit(0)
which = sys.argv[1:] or ["mf", "ann", "serving"]
for name, module in (("mf", mf), ("ann", ann), ("serving", serving)):
    if name in which:
        module.run([])
