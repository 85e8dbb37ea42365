"""DDS kept on this machine: loopback-only discovery and transport for demos and tests.

`ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST` (Jazzy) and `ROS_LOCALHOST_ONLY=1` (Humble) limit
discovery; the Fast DDS profile also binds the transport to 127.0.0.1, so no packet leaves the
host even where the variables are ignored. A random domain id keeps concurrent runs apart.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

FASTDDS_LOOPBACK = """<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>loopback_udp</transport_id>
      <type>UDPv4</type>
      <interfaceWhiteList><address>127.0.0.1</address></interfaceWhiteList>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="ddpo_loopback" is_default_profile="true">
    <rtps>
      <userTransports><transport_id>loopback_udp</transport_id></userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""


def loopback_env(folder: str | Path, domain_id: int | None = None) -> dict:
    """os.environ plus the loopback DDS settings; the Fast DDS profile is written into `folder`."""
    profile = Path(folder) / "fastdds_loopback.xml"
    profile.write_text(FASTDDS_LOOPBACK)
    env = dict(os.environ)
    env.update({
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOCALHOST_ONLY": "1",
        # 1..101: valid for every rmw; domain 0 is where a real robot would be
        "ROS_DOMAIN_ID": str(domain_id if domain_id is not None else random.SystemRandom().randint(1, 101)),
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(profile),
        "FASTDDS_DEFAULT_PROFILES_FILE": str(profile),  # the Fast DDS 3 spelling
        "RMW_IMPLEMENTATION": env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
    })
    return env


LOOPBACK_KEYS = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "ROS_DOMAIN_ID",
                 "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION")
