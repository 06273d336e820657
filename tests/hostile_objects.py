"""Hostile `parameters.objects` texts, the ones the hardening issue measured, shared by the
provider's and the webhook's tests."""

from __future__ import annotations


def huge_objects() -> str:
    """The issue's SecretProviderClass: 15000 objects, about 1 MiB, the last one invalid."""
    valid = "".join(
        f"- objectName: secret_{i:05d}\n  objectType: csms\n  objectVersion: latest\n"
        for i in range(14_999)
    )
    return valid + "- objectName: secret_last\n  objectType: csms\n  objectVersion: one\n"


def alias_bomb(levels: int = 12) -> str:
    """A few hundred bytes that expand to 10**levels values once YAML aliases are resolved."""
    lines = ["- &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"- &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"
