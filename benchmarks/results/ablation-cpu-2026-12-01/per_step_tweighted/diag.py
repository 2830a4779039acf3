"""Per-step diagnostic (issue 19) on trained ablation cells: --mode=eval's code with eval.per_step on.
Output: $DIAG_OUT (the first version wrote runs/../per_step.json)."""
import json, os, sys, argparse, logging
from benchmarks import ablation
from rdbm_jax import evaluate
logging.basicConfig(level=logging.WARNING)
runs = sys.argv[1]
out = {}
for cell in sys.argv[2:]:
    pi, obj, seed = cell.split("_")[0], cell.split("_")[1], int(cell.split("_s")[-1])
    args = ablation.parser().parse_args(["--out-dir", "/tmp/x"])
    cfg = ablation.make_config(pi, obj, seed, [10], 1000, False)
    ablation.apply_options(cfg, args, "inpaint=0.6100,noise=0.1838")
    cfg.eval.per_step = True
    cfg.sample.num_steps = 10
    evaluate.run_eval(cfg, os.path.join(runs, cell))
    doc = json.load(open(os.path.join(runs, cell, "eval", "per_step.json")))
    out[cell] = doc
    print(cell, "min_gain_over_skip", round(doc["min_gain_over_skip"], 2))
    for label, rows in doc["sources"].items():
        print("  ", label, " ".join(f"t{r['t']}: {r['model']:.1f}/{r['skip']:.1f}/{r['invert']:.1f}" for r in rows))
json.dump(out, open(os.environ["DIAG_OUT"], "w"), indent=1)
