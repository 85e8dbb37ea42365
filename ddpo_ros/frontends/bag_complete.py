"""Complete every cloud of a rosbag2 offline and write a new bag: the input, untouched, plus the results.

Every input connection and message is copied raw (same topic, type, definition, QoS, bag time),
so nothing of the recording is lost; each cloud of the chosen topic adds a completion (x, y, z
PointCloud2 with the input's header, at the input's bag time) and a /diagnostics DiagnosticArray
with that frame's stage times, steps and point counts.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from .bags import CLOUD_TYPE, cloud_topic, header, new_bag, open_bag, qos, stamp_ns, typestore
from .frame import complete_message
from .monitor import Monitor, diagnostic_array

DIAG_TYPE = "diagnostic_msgs/msg/DiagnosticArray"
DIAG_NAME = "ddpo_ros: offline completion"


def _copy_connection(writer, conn):
    """The input connection re-created in the writer with its own definition, hash and QoS."""
    return writer.add_connection(conn.topic, conn.msgtype, msgdef=conn.msgdef.data, rihs01=conn.digest,
                                 serialization_format=conn.ext.serialization_format,
                                 offered_qos_profiles=conn.ext.offered_qos_profiles)


def complete_bag(in_bag: str | Path, out_bag: str | Path, completer, *, topic: str | None = None,
                 out_topic: str | None = None, storage: str | None = None, progress: bool = True) -> dict:
    """Write out_bag = in_bag + completions on out_topic (default "<topic>/completed") + /diagnostics.

    Each cloud goes through frame.complete_message with the completer's settings, as in the node.
    A cloud the completer cannot use (malformed, empty after the crop) gets no completion, only an
    ERROR/WARN diagnostic. Returns {"clouds", "completed", "skipped", "written", "topics": counts}.
    """
    from tqdm import tqdm

    in_bag, out_bag = Path(in_bag), Path(out_bag)
    if out_bag.resolve() == in_bag.resolve():
        raise ValueError(f"{out_bag}: the output bag must differ from the input")
    ts = typestore()
    PointField = ts.types["sensor_msgs/msg/PointField"]
    diag_cls = [ts.types[f"diagnostic_msgs/msg/{n}"] for n in ("DiagnosticArray", "DiagnosticStatus", "KeyValue")]
    # window 1: each diagnostic describes its own frame, not a rolling mean (the counters still add up)
    monitor = Monitor(window=1, device=str(getattr(completer, "device", "cpu")))
    written, done = Counter(), Counter()
    with open_bag(in_bag) as reader:
        name = cloud_topic(reader, topic, in_bag)
        out_topic = out_topic or f"{name.rstrip('/')}/completed"
        if out_topic in {c.topic for c in reader.connections}:
            raise ValueError(f"{in_bag}: already has a topic {out_topic!r}; choose another out_topic")
        if storage is None:  # keep the input's storage
            storage = "mcap" if any(p.suffix == ".mcap" for p in _files(in_bag)) else "sqlite3"
        n_clouds = sum(c.msgcount for c in reader.connections if c.topic == name)
        with new_bag(out_bag, storage) as writer:
            copies, by_key = {}, {}
            for conn in reader.connections:  # one output connection per distinct topic/type/QoS
                key = (conn.topic, conn.msgtype, conn.ext.serialization_format,
                       tuple(conn.ext.offered_qos_profiles))
                if key not in by_key:
                    by_key[key] = _copy_connection(writer, conn)
                copies[conn.id] = by_key[key]
            completed = writer.add_connection(out_topic, CLOUD_TYPE, typestore=ts, offered_qos_profiles=[qos()])
            diag = next((c for c in copies.values() if c.topic == "/diagnostics" and c.msgtype == DIAG_TYPE), None)
            diag = diag or writer.add_connection("/diagnostics", DIAG_TYPE, typestore=ts,
                                                 offered_qos_profiles=[qos(depth=100)])
            bar = tqdm(total=n_clouds, desc=f"completing {name}", unit="cloud", file=sys.stderr,
                       disable=not progress)
            for conn, t, raw in reader.messages():
                writer.write(copies[conn.id], t, raw)
                written[conn.topic] += 1
                if conn.topic != name:
                    continue
                monitor.received()
                msg = reader.deserialize(raw, conn.msgtype)
                head = header(ts, stamp_ns(msg.header.stamp), msg.header.frame_id)
                result = complete_message(completer, msg, PointField, monitor)  # no live clock: no latency
                if result.cloud is None:
                    done["skipped"] += 1
                else:
                    writer.write(completed, t, ts.serialize_cdr(result.cloud, CLOUD_TYPE))
                    written[out_topic] += 1
                    done["completed"] += 1
                report = monitor.report()
                array = diagnostic_array(report, head, *diag_cls, name=DIAG_NAME, hardware_id=monitor.device)
                writer.write(diag, t, ts.serialize_cdr(array, DIAG_TYPE))
                written["/diagnostics"] += 1
                bar.update()
                bar.set_postfix(completed=done["completed"], skipped=done["skipped"])
            bar.close()
            total = sum(writer.counts.values())
            originals = reader.message_count
            if total != originals + done["completed"] + n_clouds or total != sum(written.values()):
                raise RuntimeError(f"{out_bag}: wrote {total} messages, expected {originals} originals + "
                                   f"{done['completed']} completions + {n_clouds} diagnostics")
    return {"clouds": n_clouds, "completed": done["completed"], "skipped": done["skipped"],
            "written": total, "topics": dict(written)}


def _files(bag: Path) -> list[Path]:
    """The storage files of a bag folder, or the bag file itself."""
    return sorted(bag.iterdir()) if bag.is_dir() else [bag]
