#!/usr/bin/env python3
"""An emulated fleet of boards in network namespaces (root): see `edge_agent/provision/fleet.py`.

    sudo tools/fleet.py up --inventory examples/inventory.toml
    sudo tools/fleet.py ask pi-a "What is MQTT?"
    sudo tools/fleet.py cut pi-a pi-b ; sudo tools/fleet.py heal pi-a pi-b
    sudo tools/fleet.py delay pi-b jetson-d 50 ; sudo tools/fleet.py loss pi-b jetson-d 0.05
    sudo tools/fleet.py status ; sudo tools/fleet.py down
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from edge_agent.provision.fleet_cli import main

if __name__ == "__main__":
    sys.exit(main())
