#!/usr/bin/env python3
# Pairwise fingerprint distances (1 - cos per probe, as src/tasks/batch/similarity.rs computes them) and
# the fraction of identical weights, for the calibration in RESULTS.md ("Integrity"). Standard library only.
# Usage: python3 scripts/fingerprint_pairs.py fp1.json fp2.json ...
import json,base64,struct,sys,itertools,math
fps={}
for f in sys.argv[1:]:
    j=json.load(open(f)); fps[f]=j
def vec(p):
    b=base64.b64decode(p['values']); return struct.unpack('<%df'%(len(b)//4),b)
def dist(a,b):
    ab=sum(x*y for x,y in zip(a,b)); aa=sum(x*x for x in a); bb=sum(y*y for y in b)
    if aa==0 or bb==0: return None
    return max(0,1-ab/math.sqrt(aa*bb))
def shared(a,b):
    A={};
    for n,h in a['tensors']: A[(n,h)]=A.get((n,h),0)+1
    s=0
    for n,h in b['tensors']:
        if A.get((n,h),0)>0: A[(n,h)]-=1; s+=n
    t=max(a['total'],b['total']); return s/t if t else 0
for x,y in itertools.combinations(sorted(fps),2):
    a,b=fps[x],fps[y]
    ds={p['name']:dist(vec(p),vec(q)) for p in a['probes'] for q in b['probes'] if p['name']==q['name']}
    print(f"{x:28s} {y:28s}", ' '.join(f"{k}={v:.2e}" for k,v in ds.items()), f"w={shared(a['weights'],b['weights']):.2f}")
