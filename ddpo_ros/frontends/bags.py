"""rosbag2 without ROS (the pure-Python `rosbags` library): KITTI -> bag, and the clouds of a bag.

Bags are written as rosbag2 metadata version 8 with the ROS 2 Humble typestore: rosbags' version 9
stores the QoS profiles as a YAML list that Humble's rosbag2 cannot parse, version 8 keeps the string
both Humble and Jazzy read. A bag is built in a hidden folder beside the target and renamed into place
when complete, so an interrupted run leaves no half bag under the real name. rosbags is imported
inside the functions: `import ddpo_ros` stays light.
"""
from __future__ import annotations

import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..clouds import read_pointcloud2

BAG_VERSION = 8
STORAGES = ("sqlite3", "mcap")
KITTI_EPOCH_NS = 1317600000 * 10**9  # 2011-10-03, the recording date of KITTI seq 00; a fixed, reproducible start
CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"


def typestore():
    """The message classes bags are written with (ROS 2 Humble: readable by Humble and later)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_HUMBLE)


def is_bag(path: str | Path) -> bool:
    """A rosbag2 folder (has metadata.yaml) or a bare .mcap / .db3 storage file."""
    path = Path(path)
    return (path / "metadata.yaml").is_file() if path.is_dir() else path.suffix.lower() in (".mcap", ".db3")


def qos(*, depth: int = 10, transient_local: bool = False):
    """A reliable keep-last QoS profile for the bag metadata (`ros2 bag play` offers what it reads)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    durability = QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE
    zero = QosTime(0, 0)  # rmw's "default" (infinite) deadline, lifespan and lease
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE, durability, zero, zero,
               QosLiveliness.AUTOMATIC, zero, False)


def header(ts, stamp_ns: int, frame_id: str):
    """std_msgs/Header of the typestore `ts` at stamp_ns."""
    Time, Header = ts.types["builtin_interfaces/msg/Time"], ts.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9)), frame_id=frame_id)


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time (any library's) -> integer nanoseconds."""
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


@contextmanager
def new_bag(out_bag: str | Path, storage: str = "sqlite3"):
    """A rosbags Writer for a bag that must not exist yet; the bag appears at out_bag only on success."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    out = Path(out_bag)
    if out.exists():
        raise FileExistsError(f"{out}: exists already; not overwriting (remove it or pick another output)")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # the bag keeps its final name inside the temporary folder: rosbag2 names its storage file after it
    scratch = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        writer = Writer(scratch / out.name, version=BAG_VERSION,
                        storage_plugin=StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP)
        with writer:
            yield writer
        (scratch / out.name).rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _transform(ts, stamp: int, parent: str, child: str, matrix: np.ndarray):
    """geometry_msgs/TransformStamped parent -> child from a 4x4 matrix."""
    from ..transforms import matrix_quaternion

    g = ts.types
    qx, qy, qz, qw = matrix_quaternion(matrix[:3, :3])
    x, y, z = (float(v) for v in matrix[:3, 3])
    return g["geometry_msgs/msg/TransformStamped"](
        header=header(ts, stamp, parent), child_frame_id=child,
        transform=g["geometry_msgs/msg/Transform"](
            translation=g["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
            rotation=g["geometry_msgs/msg/Quaternion"](x=float(qx), y=float(qy), z=float(qz), w=float(qw))))


def kitti_to_bag(seq_dir: str | Path, out_bag: str | Path, *, storage: str = "sqlite3",
                 topic: str = "/velodyne_points", frame_id: str = "velodyne", base_frame: str = "base_link",
                 odom_frame: str = "odom", with_tf: bool = False, base_to_sensor: np.ndarray | None = None,
                 start_stamp_ns: int = KITTI_EPOCH_NS, limit: int | None = None, progress: bool = True) -> Path:
    """A KITTI odometry sequence as a rosbag2: one PointCloud2 (x, y, z, intensity) per scan.

    Stamps are start_stamp_ns + times.txt (header stamp = bag time). /tf_static holds
    base_frame -> frame_id (`base_to_sensor`, identity by default), offered transient-local so a
    replay latches it; with_tf adds /tf odom_frame -> base_frame per scan from the poses, with
    odom_frame = base_frame at the first scan. Returns the bag folder.
    """
    from tqdm import tqdm

    from ..clouds import make_pointcloud2
    from ..datasets.kitti import KittiSequence

    seq = KittiSequence(seq_dir)
    frame_id, base_frame, odom_frame = (f.lstrip("/") for f in (frame_id, base_frame, odom_frame))  # tf2 rejects "/"
    sensor = np.eye(4) if base_to_sensor is None else np.asarray(base_to_sensor, np.float64)
    if sensor.shape != (4, 4):
        raise ValueError(f"base_to_sensor must be a 4x4 matrix, got shape {sensor.shape}")
    if with_tf and seq.pose(0) is None:
        raise ValueError(f"{seq.root}: with_tf needs poses (poses.txt), and this sequence has none")
    n = len(seq) if limit is None else min(int(limit), len(seq))
    if n < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    ts = typestore()
    PointCloud2, PointField = ts.types[CLOUD_TYPE], ts.types["sensor_msgs/msg/PointField"]
    TFMessage = ts.types["tf2_msgs/msg/TFMessage"]
    stamps = start_stamp_ns + np.round(seq.times[seq.frames[:n]] * 1e9).astype(np.int64)
    first_pose_inv = None if seq.pose(0) is None else np.linalg.inv(seq.pose(0))
    with new_bag(out_bag, storage) as writer:
        static = writer.add_connection("/tf_static", TFMessage.__msgtype__, typestore=ts,
                                       offered_qos_profiles=[qos(depth=1, transient_local=True)])
        clouds = writer.add_connection(topic, CLOUD_TYPE, typestore=ts, offered_qos_profiles=[qos()])
        tf = writer.add_connection("/tf", TFMessage.__msgtype__, typestore=ts,
                                   offered_qos_profiles=[qos(depth=100)]) if with_tf else None
        msg = TFMessage(transforms=[_transform(ts, int(stamps[0]), base_frame, frame_id, sensor)])
        writer.write(static, int(stamps[0]), ts.serialize_cdr(msg, TFMessage.__msgtype__))
        for i in tqdm(range(n), desc=f"{seq.root.name} -> bag", unit="scan", file=sys.stderr, disable=not progress):
            t = int(stamps[i])
            cloud = make_pointcloud2(seq.scan(i), header(ts, t, frame_id), PointCloud2, PointField)
            writer.write(clouds, t, ts.serialize_cdr(cloud, CLOUD_TYPE))
            if tf is not None:
                # base pose in odom = sensor mount * sensor motion since scan 0 * inverse mount
                motion = first_pose_inv @ seq.pose(i)
                odom_base = sensor @ motion @ np.linalg.inv(sensor)
                msg = TFMessage(transforms=[_transform(ts, t, odom_frame, base_frame, odom_base)])
                writer.write(tf, t, ts.serialize_cdr(msg, TFMessage.__msgtype__))
    return Path(out_bag)


def open_bag(bag: str | Path):
    """A rosbags AnyReader (not yet opened) over a bag folder or a .mcap / .db3 file."""
    from rosbags.highlevel import AnyReader

    path = Path(bag)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag")
    if not is_bag(path):
        raise ValueError(f"{path}: not a rosbag2 (a folder with metadata.yaml, or a .mcap / .db3 file)")
    return AnyReader([path], default_typestore=typestore())


def cloud_topic(reader, topic: str | None, bag) -> str:
    """The PointCloud2 topic to read: `topic` if the bag has it, else the only one there is."""
    candidates = sorted({c.topic for c in reader.connections if c.msgtype == CLOUD_TYPE})
    if topic is not None:
        if topic not in candidates:
            raise ValueError(f"{bag}: no {CLOUD_TYPE} topic {topic!r}; the bag has: {', '.join(candidates) or 'none'}")
        return topic
    if len(candidates) != 1:
        raise ValueError(f"{bag}: {len(candidates)} {CLOUD_TYPE} topics, choose one with topic=/--topic: "
                         f"{', '.join(candidates) or 'none'}")
    return candidates[0]


def read_bag_clouds(bag: str | Path, topic: str | None = None, *, intensity: bool = True):
    """Yield (topic, bag time ns, header, DecodedCloud) for each cloud of one PointCloud2 topic.

    A malformed cloud raises clouds.CloudError; the header is the message's own (stamp, frame_id).
    """
    with open_bag(bag) as reader:
        name = cloud_topic(reader, topic, bag)
        conns = [c for c in reader.connections if c.topic == name]
        for conn, t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            yield name, t, msg.header, read_pointcloud2(msg, intensity=intensity)


def kitti2bag_cli(args) -> int:
    try:
        out = kitti_to_bag(args.seq_dir, args.output, storage=args.storage, topic=args.topic,
                           frame_id=args.frame_id, base_frame=args.base_frame, with_tf=args.tf, limit=args.limit)
    except (OSError, ValueError) as err:
        print(f"ddpo kitti2bag: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0
