"""A mesh on one machine: LocalMesh, the demo, the chaos scenarios."""
