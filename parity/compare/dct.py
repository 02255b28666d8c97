"""Whether a render would encode to a JPEG preview's very coefficients, and by how much it misses.

A JPEG keeps each 8x8 block's DCT coefficient only as the index of its quantisation bin. Decoded, the preview
differs from the image that was saved by up to half a bin in every coefficient (the JPEG error), so a render
compared with the decoded preview never scores better than that error however close it is, and a render re-encoded
like the preview (`jpeg.reencode`) either lands in the same bins (identical) or differs by whole bins. Near the
answer neither moves smoothly. Here a render is carried through libjpeg's own forward path (its integer colour
conversion, chroma downsampling and ISLOW DCT, exact to the bit) and each coefficient is compared with the bin the
preview stored: `bin_misses` is how far outside its bin each one lies (0 inside). It is 0 everywhere exactly when
the render encodes to the preview's coefficients, and it shrinks continuously as a render approaches that.
`benchmarks/landscape.py --score bins` maps a search's landscape with it (docs/parameter-recovery.md, Limits: near
the answers of the smooth tiny models it has as many local maxima as the PSNR of the re-encoded render).

`read_coefficients` decodes a baseline (sequential Huffman) JPEG's quantised coefficients; a progressive or
arithmetic-coded file, a grayscale one or odd sampling factors give None (the caller keeps the pixel score).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The zig-zag order of the 64 coefficients in a JPEG stream (ITU T.81 figure A.6): ZIGZAG[k] is the natural
# (row-major) index of the k-th coefficient.
ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14,
    21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60,
    61, 54, 47, 55, 62, 63])


@dataclass
class Coefficients:
    """A colour JPEG's quantised coefficients: per component (Y, Cb, Cr) an array [rows, cols, 8, 8] of bin
    indices (natural order) over the blocks that cover the image, with its quantisation table [8, 8]."""

    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]      # (h, v) per component
    bins: list[np.ndarray]
    tables: list[np.ndarray]


class Unsupported(ValueError):
    """A JPEG this reader does not decode (progressive, arithmetic, 12-bit, not three components)."""


def read_coefficients(path: str | Path | bytes) -> Coefficients | None:
    """The quantised coefficients of a baseline colour JPEG; None for any other file (see the module docstring)."""
    try:
        return _decode(path if isinstance(path, bytes) else Path(path).read_bytes())
    except (OSError, Unsupported, IndexError, KeyError, ValueError):
        return None


def _segments(data: bytes):
    if data[:2] != b"\xff\xd8":
        raise Unsupported("not a JPEG")
    i = 2
    while i < len(data):
        if data[i] != 0xFF:
            raise ValueError("marker expected")
        marker = data[i + 1]
        if marker == 0xFF:          # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            return
        length = int.from_bytes(data[i + 2:i + 4], "big")
        body = data[i + 4:i + 2 + length]
        i += 2 + length
        if marker == 0xDA:          # the entropy-coded data runs to the next marker that is not a restart
            j = i
            while True:
                j = data.index(b"\xff", j)
                nxt = data[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    j += 2
                    continue
                break
            yield marker, body, data[i:j]
            i = j
        else:
            yield marker, body, b""


def _huffman_table(body: bytes, at: int) -> tuple[dict[tuple[int, int], int], int]:
    counts = body[at + 1:at + 17]
    values = body[at + 17:at + 17 + sum(counts)]
    table, code, k = {}, 0, 0
    for length, n in enumerate(counts, start=1):
        for _ in range(n):
            table[(length, code)] = values[k]
            code += 1
            k += 1
        code <<= 1
    return table, at + 17 + sum(counts)


class _Bits:
    """The bits of one restart interval's entropy-coded data, stuffed zero bytes removed."""

    def __init__(self, data: bytes):
        self.bits = np.unpackbits(np.frombuffer(data.replace(b"\xff\x00", b"\xff"), dtype=np.uint8)).tolist()
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > len(self.bits):
            raise ValueError("entropy-coded data ends early (a truncated file)")
        v = 0
        for b in self.bits[self.pos:self.pos + n]:
            v = (v << 1) | b
        self.pos += n
        return v

    def symbol(self, table: dict[tuple[int, int], int]) -> int:
        code = 0
        for length in range(1, 17):
            code = (code << 1) | self.read(1)
            if (length, code) in table:
                return table[(length, code)]
        raise ValueError("bad Huffman code")

    def signed(self, size: int) -> int:
        if size == 0:
            return 0
        v = self.read(size)
        return v if v >= 1 << (size - 1) else v - (1 << size) + 1


def _decode(data: bytes) -> Coefficients:
    qtables: dict[int, np.ndarray] = {}
    huff: dict[tuple[int, int], dict] = {}
    frame = None
    restart = 0
    for marker, body, scan in _segments(data):
        if marker == 0xDB:
            at = 0
            while at < len(body):
                if body[at] >> 4:
                    raise Unsupported("16-bit quantisation table")
                natural = np.zeros(64, dtype=np.int64)
                natural[ZIGZAG] = np.frombuffer(body[at + 1:at + 65], dtype=np.uint8)
                qtables[body[at] & 15] = natural.reshape(8, 8)
                at += 65
        elif marker in (0xC0, 0xC1):
            if body[0] != 8:
                raise Unsupported("not 8-bit")
            height, width, n = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
            comps = [(body[6 + 3 * c], body[7 + 3 * c] >> 4, body[7 + 3 * c] & 15, body[8 + 3 * c]) for c in range(n)]
            frame = (width, height, comps)
        elif marker in (0xC2, 0xC3) or 0xC5 <= marker <= 0xCF:
            raise Unsupported("not baseline sequential Huffman")
        elif marker == 0xC4:
            at = 0
            while at < len(body):
                table, nxt = _huffman_table(body, at)
                huff[(body[at] >> 4, body[at] & 15)] = table
                at = nxt
        elif marker == 0xDD:
            restart = int.from_bytes(body[:2], "big")
        elif marker == 0xDA:
            if frame is None:
                raise ValueError("scan before frame")
            return _scan(frame, body, scan, qtables, huff, restart)
    raise ValueError("no scan")


def _scan(frame, header: bytes, data: bytes, qtables, huff, restart: int) -> Coefficients:
    width, height, comps = frame
    if len(comps) != 3 or header[0] != 3:
        raise Unsupported("not a three-component single-scan JPEG")
    hmax, vmax = max(c[1] for c in comps), max(c[2] for c in comps)
    mcux, mcuy = -(-width // (8 * hmax)), -(-height // (8 * vmax))
    tables_of = {header[1 + 2 * k]: (header[2 + 2 * k] >> 4, header[2 + 2 * k] & 15) for k in range(3)}
    out = [np.zeros((mcuy * v, mcux * h, 64), dtype=np.int64) for _, h, v, _ in comps]
    chunks = [data] if not restart else _split_restarts(data)
    mcu, pred = 0, [0, 0, 0]
    for chunk in chunks:
        bits, pred = _Bits(chunk), [0, 0, 0]
        for _ in range(restart or mcux * mcuy):
            if mcu >= mcux * mcuy:
                break
            my, mx = divmod(mcu, mcux)
            for c, (cid, h, v, _) in enumerate(comps):
                dc, ac = huff[(0, tables_of[cid][0])], huff[(1, tables_of[cid][1])]
                for by in range(v):
                    for bx in range(h):
                        block = out[c][my * v + by, mx * h + bx]
                        pred[c] += bits.signed(bits.symbol(dc))
                        block[0] = pred[c]
                        k = 1
                        while k < 64:
                            rs = bits.symbol(ac)
                            run, size = rs >> 4, rs & 15
                            if size == 0:
                                if run != 15:
                                    break
                                k += 16
                                continue
                            k += run
                            block[ZIGZAG[k]] = bits.signed(size)
                            k += 1
            mcu += 1
    if mcu < mcux * mcuy:
        raise ValueError("fewer MCUs than the frame has (a truncated file)")
    bins, sampling = [], []
    for c, (cid, h, v, tq) in enumerate(comps):
        # the blocks that cover the component's samples; the rest of the last MCU are libjpeg's dummy blocks
        cw, ch = -(-width * h // hmax), -(-height * v // vmax)
        bins.append(out[c][:-(-ch // 8), :-(-cw // 8)].reshape(-(-ch // 8), -(-cw // 8), 8, 8))
        sampling.append((h, v))
    return Coefficients(width, height, tuple(sampling), bins, [qtables[c[3]] for c in comps])


def _split_restarts(data: bytes) -> list[bytes]:
    chunks, start, i = [], 0, 0
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            chunks.append(data[start:])
            return chunks
        if 0xD0 <= data[i + 1] <= 0xD7:
            chunks.append(data[start:i])
            start = i = i + 2
        else:
            i += 2


# --- libjpeg's forward path (jccolor.c, jcsample.c, jfdctint.c, jcdctmgr.c of libjpeg-turbo), to the bit ----------

def _fix(x: float) -> int:
    return int(x * 65536 + 0.5)


def ycc(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rgb_ycc_convert: 16-bit fixed point, each output rounded (Cb/Cr with libjpeg's ONE_HALF - 1 bias)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    half, offset = 1 << 15, 128 << 16
    y = (_fix(0.29900) * r + _fix(0.58700) * g + _fix(0.11400) * b + half) >> 16
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset + half - 1) >> 16
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset + half - 1) >> 16
    return y, cb, cr


def _pad(plane: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """libjpeg's edge expansion: the last column and row repeated out to the blocks' size."""
    return np.pad(plane, ((0, rows - plane.shape[0]), (0, cols - plane.shape[1])), mode="edge")


def downsample(plane: np.ndarray, h: int, v: int) -> np.ndarray:
    """h2v2 / h2v1 downsampling: the mean of each 2x2 (2x1) group with libjpeg's alternating rounding bias."""
    if (h, v) == (1, 1):
        return plane
    if (h, v) == (2, 2):
        s = plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]
        bias = np.where(np.arange(s.shape[1]) % 2 == 0, 1, 2)
        return (s + bias) >> 2
    if (h, v) == (2, 1):
        s = plane[:, 0::2] + plane[:, 1::2]
        bias = np.where(np.arange(s.shape[1]) % 2 == 0, 0, 1)
        return (s + bias) >> 1
    raise Unsupported(f"downsampling {h}x{v}")


# jfdctint.c constants: FIX(x) at CONST_BITS = 13
C_BITS, P_BITS = 13, 2
F0298, F0390, F0541, F0765 = 2446, 3196, 4433, 6270
F0899, F1175, F1501, F1847 = 7373, 9633, 12299, 15137
F1961, F2053, F2562, F3072 = 16069, 16819, 20995, 25172


def _descale(x: np.ndarray, n: int) -> np.ndarray:
    return (x + (1 << (n - 1))) >> n


def _fdct_pass(d: list[np.ndarray], first: bool) -> list[np.ndarray]:
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    o = [None] * 8
    bits = C_BITS - P_BITS if first else C_BITS + P_BITS
    if first:
        o[0], o[4] = (tmp10 + tmp11) << P_BITS, (tmp10 - tmp11) << P_BITS
    else:
        o[0], o[4] = _descale(tmp10 + tmp11, P_BITS), _descale(tmp10 - tmp11, P_BITS)
    z1 = (tmp12 + tmp13) * F0541
    o[2] = _descale(z1 + tmp13 * F0765, bits)
    o[6] = _descale(z1 - tmp12 * F1847, bits)
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * F1175
    tmp4, tmp5, tmp6, tmp7 = tmp4 * F0298, tmp5 * F2053, tmp6 * F3072, tmp7 * F1501
    z1, z2, z3, z4 = -z1 * F0899, -z2 * F2562, -z3 * F1961 + z5, -z4 * F0390 + z5
    o[7] = _descale(tmp4 + z1 + z3, bits)
    o[5] = _descale(tmp5 + z2 + z4, bits)
    o[3] = _descale(tmp6 + z2 + z3, bits)
    o[1] = _descale(tmp7 + z1 + z4, bits)
    return o


def fdct(plane: np.ndarray) -> np.ndarray:
    """jpeg_fdct_islow over every 8x8 block of a (padded) sample plane: [rows, cols, 8, 8], scaled up by 8."""
    h, w = plane.shape
    b = (plane - 128).reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    rows = _fdct_pass([b[..., :, i] for i in range(8)], first=True)            # each row's 8 outputs
    b = np.stack(rows, axis=-1)
    cols = _fdct_pass([b[..., i, :] for i in range(8)], first=False)
    return np.stack(cols, axis=-2)


def forward(rgb: np.ndarray, coeffs: Coefficients) -> list[np.ndarray]:
    """The render's unquantised coefficients (x 8, as jcdctmgr.c divides them) on the preview's block grid."""
    hmax = max(h for h, _ in coeffs.sampling)
    vmax = max(v for _, v in coeffs.sampling)
    out = []
    for plane, (h, v), bins in zip(ycc(rgb), coeffs.sampling, coeffs.bins):
        fh, fv = hmax // h, vmax // v
        rows, cols = bins.shape[0] * 8, bins.shape[1] * 8
        # jcsample.c pads each row to the blocks' width before downsampling; jcprepct.c completes the last row
        # group (an odd height) before it and pads the bottom after it, by repeating the last downsampled row
        full = _pad(plane, -(-plane.shape[0] // fv) * fv, cols * fh)
        out.append(fdct(_pad(downsample(full, fh, fv), rows, cols)))
    return out


def bin_misses(rgb: np.ndarray, coeffs: Coefficients) -> np.ndarray | None:
    """How far each of the render's coefficients lies outside the bin the preview stored, in units of the bin
    width (0 inside; signed; every component's blocks, flattened), or None when the sizes differ.

    jcdctmgr.c's quantize(): bin = sign(c) * ((|c| + 4q) // 8q) for c the DCT output (x 8) and q the table entry,
    so bin k >= 1 holds |c| in [8qk - 4q, 8qk + 4q - 1] and bin 0 holds |c| <= 4q - 1."""
    if rgb.shape[:2] != (coeffs.height, coeffs.width):
        return None
    misses = []
    for c, k, q in zip(forward(rgb, coeffs), coeffs.bins, coeffs.tables):
        q8 = 8 * q
        lo = np.where(k > 0, q8 * k - 4 * q, np.where(k < 0, q8 * k - 4 * q + 1, -(4 * q - 1)))
        hi = np.where(k > 0, q8 * k + 4 * q - 1, np.where(k < 0, q8 * k + 4 * q, 4 * q - 1))
        miss = np.where(c > hi, c - hi, np.where(c < lo, c - lo, 0)) / q8
        misses.append(miss.reshape(-1))
    return np.concatenate(misses)


def quantise(rgb: np.ndarray, coeffs: Coefficients) -> list[np.ndarray]:
    """The bins libjpeg would store for `rgb` with the preview's tables and sampling (what `bin_misses` checks)."""
    return [np.sign(c) * ((np.abs(c) + 4 * q) // (8 * q)) for c, q in zip(forward(rgb, coeffs), coeffs.tables)]
