"""Reading rendered provisioning files back in the provisioning tests."""

from __future__ import annotations


def acl_rules(text: str) -> dict[str, set[str]]:
    """{user: set of 'read|write topic'} from a Mosquitto ACL file; a `pattern` line (for every user) is refused."""
    rules: dict[str, set[str]] = {}
    user = None
    for line in text.splitlines():
        if line.startswith("user "):
            user = line.split()[1]
            rules[user] = set()
        elif line.startswith("topic "):
            _, access, topic = line.split()
            rules[user].add(f"{access} {topic}")
        else:
            assert not line.startswith("pattern"), line
    return rules
