# Turns updates.bin (gen.cjs) into a PartyKit dev state folder: state/party/-PartyKitDurable/
# scale.sqlite with one y-partykit key per update ("v1"#"scale"#"update"#<clock>#000), each value
# V8-serialized as workerd stores a Uint8Array. Then: ripple import-partykit state.
import sqlite3, struct, sys, os
def varint(v):
    b=bytearray()
    while v>=0x80: b.append((v&0x7f)|0x80); v>>=7
    b.append(v); return bytes(b)
def v8(x): return b'\xff\x0fB'+varint(len(x))+x+b'VB'+varint(0)+varint(len(x))+varint(0)
d='state/party/-PartyKitDurable'; os.makedirs(d, exist_ok=True)
p=d+'/scale.sqlite'
if os.path.exists(p): os.remove(p)
c=sqlite3.connect(p); c.execute('CREATE TABLE _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID')
data=open('updates.bin','rb').read(); i=0; clock=0
rows=[]
while i<len(data):
    (n,)=struct.unpack('<I',data[i:i+4]); i+=4; u=data[i:i+n]; i+=n
    rows.append(('"v1"#"scale"#"update"#%09d#000'%clock, v8(u))); clock+=1
c.executemany('INSERT INTO _cf_KV VALUES (?,?)', rows); c.commit(); print(clock,'updates')
