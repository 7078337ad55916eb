"""What today's labelling rule says of a report folder's numbers (an earlier build's, say), without a rebuild.

    .venv/bin/python tools/rejudge.py [REPORT]      # REPORT: a report folder, report/ by default

The report built at 42b9cb1 (committed at aa2529d; ``git worktree add /tmp/r42 aa2529d``, then REPORT is
/tmp/r42/report) was judged by an older rule: one-seed arms on g -/+ 5 borrowed seed SDs, and
*kept* on lo > 0 with g >= the floor. Today's rule (``lib.claims``) takes the t-interval of the borrowed SD at its
degrees of freedom and the claim's Bonferroni level, never pairs the GAN with the VAE, and keeps only when the whole
interval clears the floor. This reads each finding's gain, floor and interval from ``report/verdicts.json``, the
borrowed arm's per-seed values from ``report/runs/*/metrics.json``, and prints each label before and after: a
sensitivity check, not a rebuild (the models, samples and floors are the committed build's).
"""
import glob
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lib.claims import CLAIMS
from lib.stats import Arm, borrowed_interval, difference
R = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / 'report'
V = json.loads((R / 'verdicts.json').read_text())['subclaims']
if not any('± 5 x the largest seed SD' in f['deciding'] for f in V):
    sys.exit(f"{R} was judged by today's rule already: nothing to re-judge (the report built at 42b9cb1 was not: "
             "git worktree add /tmp/r42 aa2529d; python tools/rejudge.py /tmp/r42/report)")
runs = {}
for p in glob.glob(str(R / 'runs' / '*' / 'metrics.json')):
    d = json.loads(Path(p).read_text())
    runs.setdefault((d['notebook'], d['label']), []).append(d['metrics'] | {'seed': d['seed']})
subs = {s.id: s for c in CLAIMS.values() for s in c.subs}
num = r'([+-]?[\d.]+(?:e[+-]?\d+)?)'
changed = 0
for f in V:
    if f['label'] not in ('kept', 'refuted', 'inconclusive') or 'failed its known-case' in f['deciding']:
        continue
    s = subs[f['id']]
    m = len([x for x in V if x['claim'] == f['claim'] and x['label'] in ('kept', 'refuted', 'inconclusive')])
    conf = 1 - 0.05 / m
    g = float(re.search(r'gain ' + num, f['deciding']).group(1))
    floor = float(re.search(r'floor ' + num, f['deciding']).group(1))
    if 'one-seed arm' in f['deciding']:
        sd = float(re.search(r'seed SD of this metric here \(' + num + r'\)', f['deciding']).group(1))
        cands = [Arm(lab, [x[s.metric] for x in ms]) for (nb, lab), ms in runs.items()
                 if nb == f['notebook'] and len(ms) >= 2 and all(s.metric in x for x in ms)]
        big = min(cands, key=lambda a: abs(a.sd - sd))
        nb_ = re.search(r'vs [^;]*?\((\d+) seeds?\)', f['deciding'])
        n_b = None if s.limit else int(nb_.group(1)) if nb_ else 1
        lo, hi = borrowed_interval(g, big.sd, big.n - 1, 1, n_b, s.factor, conf)
        how = f"t-interval on {big.name}'s SD {big.sd:.3g} ({big.n - 1} df)"
    elif f['id'] == 'c1':
        gan = [x['fid'] for x in runs[('03_gan', 'GAN')]]; vae = [x['fid'] for x in runs[('01_vae_basic', 'BCE+KLD')]]
        d = difference(Arm('GAN', gan, (0, 1, 2)), Arm('VAE', vae, (0, 1, 2)), 'lower', conf, paired=False)
        lo, hi, how = d.lo, d.hi, f"Welch, df {d.df:.1f}"
    else:
        lo, hi = (float(x) for x in re.search(r'\[' + num + ', ' + num + r'\]', f['deciding']).groups())
        how = 'interval as committed'
    label = 'kept' if lo >= floor else 'refuted' if hi < 0 or hi < floor else 'inconclusive'
    flag = '  <-- CHANGES' if label != f['label'] else ''
    changed += bool(flag)
    print(f"{f['id']}: {f['label']} -> {label}; gain {g:+.4g} [{lo:+.4g}, {hi:+.4g}], floor {floor:g} ({how}){flag}")
print(f"{changed} of {sum(1 for f in V if f['label'] in ('kept', 'refuted', 'inconclusive'))} tested labels change")
