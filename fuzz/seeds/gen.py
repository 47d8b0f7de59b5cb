# Writes the hand-made seeds of npy_open and image_open in their input formats: `python3 seeds/gen.py seeds` (from fuzz/).
import os, struct, zlib, sys
root = sys.argv[1]
TYPES = ['|u1','|i1','<u2','<i2','<u4','<i4','<u8','<i8','<f4','<f8']
SIZES = [1,1,2,2,4,4,8,8,4,8]

def npy(descr, shape, fortran=False, version=1, size=1, extra_keys=''):
    shp = '(' + ', '.join(str(n) for n in shape) + (',' if len(shape) == 1 else '') + ')'
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, %s}" % (descr, 'True' if fortran else 'False', shp, extra_keys)
    pre = 10 if version == 1 else 12
    hl = len(d) + 1
    pad = (64 - (pre + hl) % 64) % 64
    h = (d + ' ' * pad + '\n').encode()
    out = b'\x93NUMPY' + bytes([version, 0])
    out += struct.pack('<H', len(h)) if version == 1 else struct.pack('<I', len(h))
    out += h
    n = 1
    for x in shape: n *= x
    out += bytes((i * 37 + 11) & 0xff for i in range(n * size))
    return out

d = os.path.join(root, 'npy_open'); os.makedirs(d, exist_ok=True)
for ty, (descr, size) in enumerate(zip(TYPES, SIZES)):
    cases = [
        ('c3x4', (3, 4), False, 1, 1 << 2 | 1),
        ('f4x2', (4, 2), True, 1, 2 << 2 | 2),
        ('v2_5', (5,), False, 2, 2 << 2),
        ('c2x2x3', (2, 2, 3), False, 1, 1 << 2),
        ('empty0x3', (0, 3), False, 1, 1 << 2),
        ('scalar', (), False, 1, 1 << 2),
    ]
    for name, shape, fortran, version, opts in cases:
        f = npy(descr, shape, fortran, version, size)
        # no xor; then a small xor over the end (bit 6: the range and the raw flag) and over the start
        open(os.path.join(d, f't{ty}_{name}'), 'wb').write(bytes([ty, opts, 0]) + f)
        if name in ('c3x4', 'f4x2'):
            open(os.path.join(d, f't{ty}_{name}_xend'), 'wb').write(bytes([ty, opts, 0x40 | 3, 0, 0, 1]) + f)
            open(os.path.join(d, f't{ty}_{name}_xraw'), 'wb').write(bytes([ty, opts, 0x40 | 3, 1, 0, 0]) + f)

def chunk(t, data):
    return struct.pack('>I', len(data)) + t + data + struct.pack('>I', zlib.crc32(t + data) & 0xffffffff)

def png(w, h, color, depth, rows, interlace=0, plte=None, trns=None):
    out = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, color, 0, 0, interlace))
    if plte: out += chunk(b'PLTE', plte)
    if trns: out += chunk(b'tRNS', trns)
    out += chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b'')
    return out

def raw_rows(w, h, bpp_bits):
    stride = (w * bpp_bits + 7) // 8
    return b''.join(b'\x00' + bytes((x * 7 + y * 13) & 0xff for x in range(stride)) for y in range(h))

d = os.path.join(root, 'image_open'); os.makedirs(d, exist_ok=True)
pngs = {
    'gray8_5x3': png(5, 3, 0, 8, raw_rows(5, 3, 8)),
    'gray1_9x2': png(9, 2, 0, 1, raw_rows(9, 2, 1)),
    'rgb8_4x4': png(4, 4, 2, 8, raw_rows(4, 4, 24)),
    'rgba16_3x2': png(3, 2, 6, 16, raw_rows(3, 2, 64)),
    'graya8_2x2': png(2, 2, 4, 8, raw_rows(2, 2, 16)),
    'pal4_6x3': png(6, 3, 3, 4, raw_rows(6, 3, 4), plte=bytes(range(48)), trns=b'\x00\x80'),
}
for i, (name, p) in enumerate(pngs.items()):
    for sel in range(4):
        open(os.path.join(d, f'png_{name}_s{sel}'), 'wb').write(bytes([sel]) + p)
