"""Split README.md's sections into docs/guides/ (issue 32's documentation by purpose).

One-off, for the merge: run it on the merged README.md (sections are found by their headings,
not line numbers), check `git diff docs/guides`, then replace README.md by
docs/README_front_door.md and delete this script. It writes docs/guides/*.md only.

    python scripts/split_readme.py
"""
import re
from pathlib import Path
root = Path(__file__).resolve().parents[1]
lines = (root / "README.md").read_text().splitlines()

def take(a, b):
    return lines[a - 1:b]

def shift(block, top):
    """Headings shifted so that the block's highest heading becomes level `top` (outside code fences)."""
    fence, levels = False, []
    for l in block:
        if l.startswith("```"): fence = not fence
        elif not fence and re.match(r"#+ ", l): levels.append(len(l.split()[0]))
    if not levels: return block
    d = top - min(levels)
    out, fence = [], False
    for l in block:
        if l.startswith("```"): fence = not fence
        elif not fence and re.match(r"#+ ", l):
            n = len(l.split()[0]); l = "#" * (n + d) + l[n:]
        out.append(l)
    return out

LINKS = {
    "(#analysis)": "(analysis.md)",
    "(#which-likelihood-for-which-data)": "(specs.md#which-likelihood-for-which-data)",
    "(#comparing-along-any-axis)": "(comparing.md)",
}
def fix(text):
    for a, b in LINKS.items(): text = text.replace(a, b)
    text = text.replace('(see "Running someone else\'s run")', "(see [Running someone else's run](runs.md#running-someone-elses-run))")
    text = text.replace('see "Running someone else\'s run")', "see [Running someone else's run](runs.md#running-someone-elses-run))")
    text = text.replace('(see "Data from someone else" under `[data]`)', "(see [Data from someone else](data.md))")
    return text

def row(n):
    """A row of the README's command table as a usage line and a paragraph."""
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[n - 1])[1:-1]]
    text = cells[1].replace("\\|", "|").replace("keys of the spec (below)", "keys of the spec (above)")
    return ["Usage: " + cells[0].replace("\\|", "|"), "", text[0].upper() + text[1:]]


def page(name, title, intro, *parts):
    body = [f"# {title}", "", intro, ""]
    for p in parts:
        body += p + [""]
    text = fix("\n".join(body)).rstrip() + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text).replace("Timings in this README", "Timings in these pages")
    (root / "docs/guides" / name).write_text(text)


def find(prefix, after=1):
    return next(i + 1 for i, l in enumerate(lines) if i + 1 >= after and l.startswith(prefix))

REF = "Every key and kind, with its type and default: [the spec reference](../reference/spec.md); every flag: [the command-line reference](../reference/cli.md)."
quick = find("## Quick start"); then = find("Then:"); which = find("**Which ArviZ.**")
python_ = find("## From Python"); components = find("## Your own components"); specs = find("## Specs")
model = find("### `[model]`"); stacked = find("**Stacked stochastic layers**"); discrete = find("**A discrete latent**")
inference = find("### `[inference]`"); kl = find("**The default's Monte Carlo KL"); optim = find("**Optimizers**")
data_ = find("### `[data]`"); cli = find("## CLI"); comparing = find("### Comparing along any axis")
tracking = find("### Tracking"); several = find("## Several processes"); faults = find("**Faults and resuming.**")
rundir = find("## The run directory"); running = find("## Running someone else's run"); analysis = find("## Analysis")
bench = find("## Benchmarks"); compare_row = find("| `pyro-vae compare"); evaluate_row = find("| `pyro-vae evaluate")

page("first-run.md", "Installing, and the first run measured",
     "What the quick start's two commands do, how long they take, what the default run reaches, and installing on Python 3.12 and 3.13. " + REF,
     take(quick + 2, quick + 5), take(quick + 6, then - 1), ["## Then", ""] + take(then + 1, which - 1),
     ["## Python versions and ArviZ", ""] + take(which, python_ - 1))
page("python.md", "From Python",
     "The library without the command line: build a VAE from a spec and step it with `pyro.infer.SVI`, or load a trained run. " + REF,
     take(python_ + 2, components - 1))
page("components.md", "Your own components",
     "A class of your own in any slot, without touching the library. How the library's own extension points work (a new estimator's traits and traced loss): [architecture](../architecture.md#extension-points).",
     take(components + 2, specs - 1))
page("specs.md", "Writing specs",
     "How a spec is put together, and what each choice of model and inference means, with the measurements behind the advice. " + REF,
     take(specs + 2, model - 1), shift(take(model, stacked - 1), 2),
     ["Stacked layers and a discrete latent: [latent structure](latent-structure.md)."],
     shift(take(inference, kl - 1), 2), shift(take(optim, data_ - 1), 2),
     ["Data (`[data]`): [data formats](data.md). The measured comparison of `trace_elbo` with `trace_mean_field`: [comparing](comparing.md#a-worked-example-the-default-monte-carlo-kl-against-the-closed-form)."])
page("latent-structure.md", "Discrete latents and latent structure",
     "Stacked stochastic layers (`[[model.upper_layers]]`) and a categorical latent y (`[model.discrete]`) at the top of the structure, and how each estimator treats them. " + REF,
     ["## Stacked stochastic layers", ""] + take(stacked, discrete - 1), ["## A discrete latent", ""] + take(discrete, inference - 1))
page("data.md", "Data formats",
     "What data pyro-vae reads, how it prepares them, and what it refuses. Which likelihood suits which data: [writing specs](specs.md#which-likelihood-for-which-data). " + REF,
     shift(take(data_, cli - 1), 2))
page("commands.md", "What each command does",
     "The commands in more words than `--help`; every flag with its default is in [the command-line reference](../reference/cli.md).",
     take(cli + 2, comparing - 1))
MEASURED = ['## The first example, measured', '', '`pyro-vae compare --vary model.prior.kind=standard_normal,mixture,vamp --seeds 3 --out runs/priors`, run on', '2026-12-06 with the code of commit c1f49ed on the 2-core test machine while it was shared with other work', '(`OMP_NUM_THREADS=1`, `nice`: about 8 minutes). Its `comparison_loglik.png`:', '', '![Held-out log p(x) of three priors on the digits, and the paired differences to the standard normal](../images/compare_priors_loglik.png)', '', 'and its `comparison.md`:', '', '> **Comparison: model.prior.kind**', '>', '> Model `binomial`, inference `trace_elbo`, data `digits`.', '> Each cell trained with seeds 0..2: the same data order and, for the parts the cells share, the same initial weights per seed. Held-out log p(x) by importance sampling with K = 1000 on the same 180 valid examples for every cell.', '> Figures are means over 3 seed(s) ± their standard error over seeds. Δ is the paired difference of log p(x) to `standard_normal` (same seed, same examples) ± its paired standard error over seeds.', '>', '> | cell | prior | log p(x) | Δ vs standard_normal | ELBO | KL | active units | s/epoch |', '> |---|---|---:|---:|---:|---:|---:|---:|', '> | `standard_normal` | standard_normal | −90.16 ± 0.47 | reference | −95.28 ± 0.63 | 22.37 ± 0.37 | 15.7 | 0.08 |', '> | `mixture` | mixture | −87.82 ± 0.44 | +2.34 ± 0.06 | −93.00 ± 0.49 | 20.85 ± 0.55 | 16.0 | 0.07 |', '> | `vamp` | vamp | −86.16 ± 0.26 | +4.00 ± 0.47 | −92.23 ± 0.41 | 21.52 ± 0.47 | 16.0 | 0.17 |']
klp = take(kl, optim - 1)
klp[0] = klp[0].replace("**The default's Monte Carlo KL against the closed form.** ", "")
page("comparing.md", "Comparing along any axis",
     "`pyro-vae compare` trains and evaluates model variants or estimators on equal terms and says how sure the difference is. " + REF,
     take(comparing + 2, tracking - 1), ["## What `compare` writes", ""] + row(compare_row),
     MEASURED, ["## A worked example: the default Monte Carlo KL against the closed form", ""] + klp)
page("analysis.md", "Evaluation and analysis with ArviZ",
     "`pyro-vae evaluate` (importance-sampled log p(x)) and `pyro-vae analyze` (ArviZ data, PSIS diagnostics, figures, a report), on ArviZ 0.x or 1.x. " + REF,
     ["## `pyro-vae evaluate`", ""] + row(evaluate_row), ["## `pyro-vae analyze`", ""] + take(analysis + 2, bench - 1))
page("tracking.md", "Tracking", "Following a run in TensorBoard or MLflow while it trains. " + REF, take(tracking + 2, several - 1))
page("distributed.md", "Several processes, GPUs and machines",
     "Data-parallel training and evaluation with `torchrun`, on one machine or several (SLURM). Stopping and resuming such a job: [faults and resuming](runs.md). " + REF,
     take(several + 2, faults - 1), ["## Faults and resuming under torchrun", ""] + [lines[faults - 1].replace("**Faults and resuming.** ", "")] + take(faults + 1, rundir - 1))
page("runs.md", "Runs, faults and resuming",
     "What a run directory holds, how a run survives a kill and is resumed or extended, who may write it, and how a run from someone else is read safely. Under torchrun: [several processes](distributed.md#faults-and-resuming-under-torchrun). " + REF,
     shift(take(rundir, running - 1), 2), shift(take(running, analysis - 1), 2))
