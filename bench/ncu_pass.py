import csv,sys
from collections import defaultdict
def load(f):
    rows=list(csv.reader(open(f))); hdr=None; data=[]
    for r in rows:
        if r and r[0]=='ID': hdr=r; continue
        if hdr and len(r)==len(hdr): data.append(dict(zip(hdr,r)))
    return data
def val(d): return float(d['Metric Value'].replace(',',''))
def summ(seg,title):
    agg=defaultdict(lambda:[0,0.0]); tot=0
    for d in seg:
        n=d['Kernel Name'][:70]; t=val(d); agg[n][0]+=1; agg[n][1]+=t; tot+=t
    print('---',title,'kernels',len(seg),'total us %.1f'%(tot/1e3))
    for n,(c,t) in sorted(agg.items(), key=lambda x:-x[1][1])[:16]: print(f"{c:4d} {t/1e3:9.1f} us  {n}")
d=load(sys.argv[1])
if sys.argv[2]=='graph':
    i0=[i for i,x in enumerate(d) if x['Kernel Name'].startswith('cp_embed')][-1]
    j=[i for i,x in enumerate(d) if x['Kernel Name'].startswith('cp_last') and i>i0][0]
    summ(d[i0:j+1],'graph pass')
else:
    # MLX pass: last occurrence of the prompt's gather ... find kernels with 'gather' names
    names=[x['Kernel Name'] for x in d]
    g=[i for i,n in enumerate(names) if 'gather' in n.lower()]
    print('gathers at', g[-6:])
    i0=g[-1] if len(sys.argv)<4 else int(sys.argv[3])
    j=int(sys.argv[4]) if len(sys.argv)>4 else i0+250
    summ(d[i0-2:j],'mlx pass')
    for k in range(i0-3,i0+3): print(k,names[k][:60])
