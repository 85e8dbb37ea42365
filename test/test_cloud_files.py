"""Point cloud files: PLY, PCD (with LZF binary_compressed), KITTI .bin and .npy, read and written."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import DATA, kitti_scan
from ddpo_ros.datasets.cloud_files import (
    lzf_decompress, read_cloud, read_pcd, read_ply, write_cloud, write_pcd, write_ply,
)
from ddpo_ros.clouds import KITTI_FRAME


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One folder for the hypothesis examples (a function-scoped tmp_path is not reset between them)."""
    return tmp_path_factory.mktemp("clouds")


def bits(a: np.ndarray) -> np.ndarray:
    """float32 as its bit patterns: equal NaNs (payload, sign) and signed zeros compare exactly."""
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


# ---------------------------------------------------------------- round trips

def split(pts):
    return pts[:, :3], (pts[:, 3] if pts.shape[1] == 4 else None)


# name -> (suffix, writer, binary: whether every float32 bit pattern must come back)
WRITERS = {
    "ply": (".ply", lambda p, pts: write_ply(p, *split(pts)), True),
    "pcd-binary": (".pcd", lambda p, pts: write_pcd(p, *split(pts), data="binary"), True),
    "pcd-ascii": (".pcd", lambda p, pts: write_pcd(p, *split(pts), data="ascii"), False),
    "cloud-ply": (".ply", write_cloud, True),
    "cloud-pcd": (".pcd", write_cloud, True),
    "cloud-bin": (".bin", write_cloud, True),
    "cloud-npy": (".npy", write_cloud, True),
}

# N = 0 and N = 1 come up first (hypothesis shrinks towards them); nan, inf, -0.0, subnormals included
CLOUDS = st.tuples(st.integers(0, 30), st.sampled_from([3, 4])).flatmap(
    lambda shape: arrays(np.float32, shape, elements=st.floats(width=32)))


@pytest.mark.parametrize("kind", WRITERS)
@settings(max_examples=25, deadline=None)
@given(pts=CLOUDS)
def test_round_trip(kind, pts, scratch):
    suffix, write, binary = WRITERS[kind]
    path = scratch / f"{kind}{suffix}"
    write(path, pts)
    got = read_cloud(path)
    want = pts
    if suffix == ".bin" and pts.shape[1] == 3:  # KITTI rows always carry a remission, 0 when unknown
        want = np.column_stack([pts, np.zeros(len(pts), np.float32)])
    assert got.dtype == np.float32 and got.shape == want.shape
    if binary:
        np.testing.assert_array_equal(bits(got), bits(want))
    else:  # ascii keeps every finite value exactly, and nan as a nan
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n", [0, 1])
def test_edge_sizes_every_format(n, tmp_path):
    pts = np.arange(4 * n, dtype=np.float32).reshape(n, 4)
    for suffix in (".ply", ".pcd", ".bin", ".npy"):
        write_cloud(tmp_path / f"c{suffix}", pts)
        np.testing.assert_array_equal(read_cloud(tmp_path / f"c{suffix}"), pts)


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pcd"
    write_pcd(path, np.ones((2, 3)))
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savetxt", fail)
    with pytest.raises(OSError, match="disk full"):
        write_pcd(path, np.zeros((5, 3)), data="ascii")
    assert path.read_bytes() == before  # the old file is whole ...
    assert [p.name for p in tmp_path.iterdir()] == ["c.pcd"]  # ... and no temporary file is left


# ---------------------------------------------------------------- hand-written PLY

def test_ascii_ply_odd_property_order_and_faces(tmp_path):
    path = tmp_path / "hand.ply"
    path.write_text(
        "ply\nformat ascii 1.0\ncomment made by hand\nobj_info odd order\n"
        "element vertex 3\n"
        "property uchar red\nproperty double z\nproperty float y\nproperty int16 ring\n"
        "property float x\nproperty float intensity\nproperty uint8 green\n"
        "element face 1\nproperty list uchar int vertex_indices\n"
        "end_header\n"
        "255 3.5 2.5 7 1.5 0.25 0\n"
        "0 -3 -2 8 -1 0.5 1\n"
        "10 0 0 9 0 1 2\n"
        "3 0 1 2\n"
    )
    np.testing.assert_array_equal(read_ply(path), [[1.5, 2.5, 3.5, 0.25], [-1, -2, -3, 0.5], [0, 0, 0, 1]])


def test_big_endian_ply_skips_elements_around_the_vertices(tmp_path):
    vertex = np.array(
        [(0.5, 3.0, 1.0, 7, 2.0), (0.75, -3.0, -1.0, 8, -2.0)],
        dtype=[("remission", ">f4"), ("z", ">f8"), ("x", ">f4"), ("flags", ">u2"), ("y", ">f8")],
    )
    camera = np.array([(500.0, -1)], dtype=[("fx", ">f4"), ("k", ">i2")])  # an element before vertex
    face = struct.pack(">B3i", 3, 0, 1, 0)  # after vertex: never read
    header = (
        "ply\nformat binary_big_endian 1.0\n"
        "element camera 1\nproperty float32 fx\nproperty short k\n"
        "element vertex 2\nproperty float remission\nproperty float64 z\nproperty float x\n"
        "property ushort flags\nproperty double y\n"
        "element face 1\nproperty list uint8 int32 vertex_indices\nend_header\n"
    )
    path = tmp_path / "be.ply"
    path.write_bytes(header.encode() + camera.tobytes() + vertex.tobytes() + face)
    np.testing.assert_array_equal(read_cloud(path), [[1, 2, 3, 0.5], [-1, -2, -3, 0.75]])


# ---------------------------------------------------------------- hand-written PCD

def test_ascii_pcd_with_padding_and_counts(tmp_path):
    path = tmp_path / "hand.pcd"
    path.write_text(
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        "FIELDS normal x y z intensity _ ring\nSIZE 4 4 4 4 4 1 2\nTYPE F F F F F U U\nCOUNT 3 1 1 1 1 3 1\n"
        "WIDTH 2\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA ascii\n"
        "0.1 0.2 0.3 1 2 3 0.5 9 9 9 7\n"
        "0 0 1 nan nan nan 0 0 0 0 8\n"
    )
    got = read_pcd(path)
    np.testing.assert_array_equal(got, [[1, 2, 3, 0.5], [np.nan, np.nan, np.nan, 0]])  # NaN rows are kept


def test_binary_pcd_v06_with_padding_bytes(tmp_path):
    rows = np.zeros(3, dtype={"names": ["x", "y", "z", "rgb", "ring"], "formats": ["<f4"] * 3 + ["<u4", "<u2"],
                              "offsets": [0, 4, 8, 16, 20], "itemsize": 24})
    rows["x"], rows["y"], rows["z"], rows["rgb"], rows["ring"] = [1, 2, 3], [4, 5, 6], [7, 8, 9], 0xFFFFFF, 5
    buf = bytearray(rows.tobytes())
    buf[12:16], buf[22:24] = b"\xff" * 4, b"\xff" * 2  # garbage in the padding must not matter
    header = (
        "# .PCD v0.6\nVERSION .6\nFIELDS x y z _ rgb ring _\nSIZE 4 4 4 4 4 2 2\nTYPE F F F U U U U\n"
        "WIDTH 3\nHEIGHT 1\nPOINTS 3\nDATA binary\n"  # 0.6: no VIEWPOINT; no COUNT means 1 each
    )
    path = tmp_path / "v06.pcd"
    path.write_bytes(header.encode() + bytes(buf))
    np.testing.assert_array_equal(read_pcd(path), [[1, 4, 7], [2, 5, 8], [3, 6, 9]])


def lzf_literals(data: bytes) -> bytes:
    """The simplest valid LZF: literal runs of at most 32 bytes, each after a control byte (length - 1)."""
    return b"".join(bytes([len(data[i:i + 32]) - 1]) + data[i:i + 32] for i in range(0, len(data), 32))


def compressed_pcd(columns: dict[str, np.ndarray], compress=lzf_literals) -> bytes:
    """A binary_compressed PCD: each (N, count) column's values contiguous, one after the other, LZF'd."""
    n = len(next(iter(columns.values())))
    cols = {name: np.asarray(c).reshape(n, -1) for name, c in columns.items()}
    raw = b"".join(c.astype(c.dtype.newbyteorder("<")).tobytes() for c in cols.values())
    packed = compress(raw)
    header = (
        f"VERSION 0.7\nFIELDS {' '.join(cols)}\n"
        f"SIZE {' '.join(str(c.itemsize) for c in cols.values())}\n"
        f"TYPE {' '.join(c.dtype.kind.upper() for c in cols.values())}\n"
        f"COUNT {' '.join(str(c.shape[1]) for c in cols.values())}\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA binary_compressed\n"
    )
    return header.encode() + struct.pack("<II", len(packed), len(raw)) + packed


def test_binary_compressed_pcd(tmp_path):
    rng = np.random.default_rng(0)
    xyz, ring = rng.normal(size=(50, 3)).astype(np.float32), np.arange(50, dtype=np.uint16)
    xyz[7] = np.nan
    path = tmp_path / "c.pcd"
    path.write_bytes(compressed_pcd({
        "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "_": np.full((50, 4), 0xAB, np.uint8),
        "ring": ring, "normal": rng.normal(size=(50, 3)).astype(np.float64), "reflectance": ring / 100,
    }))
    want = np.column_stack([xyz, (ring / 100).astype(np.float32)])
    np.testing.assert_array_equal(bits(read_cloud(path)), bits(want))


def test_binary_compressed_pcd_with_an_overlapping_back_reference(tmp_path):
    # the x column is 1.0f four times: a 4-byte literal, then 12 bytes copied from 4 back (overlapping)
    x_column = bytes([0x03, 0x00, 0x00, 0x80, 0x3F, 0xE0, 12 - 2 - 7, 4 - 1])
    yz = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.float32).tobytes()
    packed = x_column + lzf_literals(yz)
    path = tmp_path / "ref.pcd"
    path.write_bytes(
        b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 4\nHEIGHT 1\nPOINTS 4\n"
        b"DATA binary_compressed\n" + struct.pack("<II", len(packed), 48) + packed)
    np.testing.assert_array_equal(read_pcd(path), [[1, 0, 4], [1, 1, 5], [1, 2, 6], [1, 3, 7]])


@pytest.mark.parametrize("packed, want", [
    (bytes([0x00, 0x61, 0xE0, 0x00, 0x00]), b"a" * 10),  # 'a', then 9 copied from 1 back: a run
    (bytes([0x01, 0x61, 0x62, 0x20, 0x01]), b"ababa"),  # 'ab', then 3 from 2 back
    (bytes([0x05]) + b"abcdef" + bytes([0x20, 0x05]), b"abcdefabc"),  # 3 from 6 back: no overlap
    # 300 literal bytes, then 10 copied from 300 back: the distance needs the control byte's low bits
    (lzf_literals(bytes(range(256)) + bytes(44)) + bytes([0xE1, 1, 299 & 0xFF]),
     bytes(range(256)) + bytes(44) + bytes(range(10))),
    (b"", b""),
])
def test_lzf_decompress_known_output(packed, want):
    assert lzf_decompress(packed, len(want)) == want


@pytest.mark.parametrize("packed, size, problem", [
    (bytes([0x00, 0x61, 0x20, 0x01]), 4, "back-reference"),  # 2 back with 1 byte written
    (bytes([0x05, 0x61]), 6, "literal run"),  # input ends inside the run
    (bytes([0x00, 0x61, 0xE0]), 10, "cut off"),  # input ends inside the reference
    (bytes([0x00, 0x61]), 2, "1 bytes decompressed, 2 expected"),
])
def test_lzf_decompress_rejects_corrupt_data(packed, size, problem):
    with pytest.raises(ValueError, match=problem):
        lzf_decompress(packed, size)


# ---------------------------------------------------------------- the real frame

@pytest.mark.parametrize("suffix", [".ply", ".pcd", ".bin", ".npy", "compressed.pcd"])
def test_real_kitti_frame(suffix, tmp_path):
    scan = kitti_scan(0)
    path = tmp_path / f"frame{suffix}"
    if suffix == "compressed.pcd":
        columns = {"x": scan[:, 0], "y": scan[:, 1], "z": scan[:, 2], "remission": scan[:, 3]}
        path.write_bytes(compressed_pcd(columns))
    else:
        write_cloud(path, scan)
    np.testing.assert_array_equal(bits(read_cloud(path)), bits(scan))
    assert read_cloud(DATA / KITTI_FRAME).shape == (124668, 4)


# ---------------------------------------------------------------- errors name the file

def test_truncated_binary_data(tmp_path):
    pts = np.ones((4, 3), np.float32)
    for name, write in (("cut.ply", write_ply), ("cut.pcd", write_pcd)):
        write(tmp_path / name, pts)
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:-3])
        with pytest.raises(ValueError, match=rf"cut\.{name[-3:]}: truncated data"):
            read_cloud(tmp_path / name)
    path = tmp_path / "cut_lzf.pcd"
    path.write_bytes(compressed_pcd({"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]})[:-3])
    with pytest.raises(ValueError, match=r"cut_lzf\.pcd: truncated data"):
        read_pcd(path)


def test_missing_x_field(tmp_path):
    (tmp_path / "nox.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float y\nproperty float z\nend_header\n1 2\n")
    with pytest.raises(ValueError, match=r"nox\.ply: no 'x' field"):
        read_ply(tmp_path / "nox.ply")
    (tmp_path / "nox.pcd").write_text(
        "FIELDS y z\nSIZE 4 4\nTYPE F F\nWIDTH 1\nDATA ascii\n1 2\n")
    with pytest.raises(ValueError, match=r"nox\.pcd: no 'x' field"):
        read_pcd(tmp_path / "nox.pcd")


def test_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"c\.xyz: unknown point cloud suffix '\.xyz' \(supported: .*\.ply"):
        read_cloud(tmp_path / "c.xyz")
    with pytest.raises(ValueError, match=r"c\.las: unknown point cloud suffix"):
        write_cloud(tmp_path / "c.las", np.zeros((1, 3)))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, content, problem", [
    ("pcd.ply", b"# .PCD v0.7\nVERSION 0.7\n", "not a PLY file"),
    ("bytes.ply", bytes(range(256)) * 4, "not a PLY file"),
    ("list.ply", b"ply\nformat ascii 1.0\nelement vertex 1\nproperty list uchar float x\nend_header\n",
     "list property in the vertex element"),
    ("v2.ply", b"ply\nformat ascii 2.0\nend_header\n", "bad PLY header line 'format ascii 2.0'"),
    ("noend.ply", b"ply\nformat ascii 1.0\nelement vertex 0\n", "no end_header"),
    ("word.ply", b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                 b"property float z\nend_header\n1 2 three\n", "bad ascii value"),
    ("ply.pcd", b"ply\nformat ascii 1.0\n", "not a PCD header line: 'ply'"),
    ("half.pcd", b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 2\nDATA ascii\n1 2 3 4\n",
     "truncated data: 4 values for 2 rows of 3"),
    ("type.pcd", b"FIELDS x y z\nSIZE 4 4 2\nTYPE F F F\nWIDTH 1\nDATA binary\n",
     "field 'z' has unsupported TYPE F SIZE 2"),
    ("size.pcd", b"FIELDS x y z\nSIZE 4 4\nTYPE F F F\nWIDTH 1\nDATA binary\n", "SIZE has 2 entries for 3 FIELDS"),
    ("lzf.pcd", b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nDATA binary_compressed\n"
                + struct.pack("<II", 2, 12) + bytes([0x20, 0x00]), "corrupt LZF data"),
    ("shape.npy", None, r"must be \(N, 3\) or \(N, 4\), got \(2, 5\)"),
])
def test_bad_files_name_the_file_and_the_problem(name, content, problem, tmp_path):
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros((2, 5), np.float32))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: .*{problem}"):
        read_cloud(path)


# ---------------------------------------------------------------- cross-check with plyfile

def test_plyfile_agrees(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    pts = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    write_ply(tmp_path / "ours.ply", pts[:, :3], pts[:, 3])
    v = plyfile.PlyData.read(tmp_path / "ours.ply")["vertex"]
    np.testing.assert_array_equal(np.column_stack([v[a] for a in ("x", "y", "z", "intensity")]), pts)

    vertex = np.array([tuple(p) + (i,) for i, p in enumerate(pts.astype(np.float64))],
                      dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"), ("reflectance", "f4"), ("label", "u2")])
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    for text, order in ((True, "="), (False, ">"), (False, "<")):
        theirs = plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"),
                                  plyfile.PlyElement.describe(faces, "face")], text=text, byte_order=order)
        theirs.write(tmp_path / "theirs.ply")
        np.testing.assert_array_equal(read_ply(tmp_path / "theirs.ply"), pts)  # reflectance, not label
