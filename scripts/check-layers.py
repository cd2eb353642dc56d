#!/usr/bin/env python3
"""Fails on an import from a layer above (issue 12). The layers of src/, bottom to top:

  0  error, sys          whose fault an error is; libc calls
  1  policy              names, groups, rules, address classes (no tokio, no hickory)
  2  config              a type for every section
  3  telemetry, live,    counters with fixed labels; the running config and policy;
     learn,              what report mode saw (the learned allowlist);
     host, listen,       the host's addresses; accept-loop limits; the forwarding check
     forwarding
  4  lists, dns, proxy,  the list refresher and the front doors (may use each other)
     routed, admin
  5  app                 build, serve, reload
     main.rs             the CLI (imports the library as `portcullis::`, not `crate::`)

A module may use its own layer and the ones below. Every `crate::<module>` path counts,
in `use` lines and inline, outside comments. Prints file:line for each violation.
"""
import pathlib
import re
import sys

LAYERS = {
    "error": 0, "sys": 0,
    "policy": 1,
    "config": 2,
    "telemetry": 3, "live": 3, "host": 3, "listen": 3, "forwarding": 3, "learn": 3,
    "lists": 4, "dns": 4, "proxy": 4, "routed": 4, "admin": 4,
    "app": 5,
}
PATH = re.compile(r"\bcrate::([a-z_]+)\b(?!!)")
# `use crate::{a, b::c}` groups name several modules at once.
GROUP = re.compile(r"\bcrate::\{([^}]*)\}")


def strip_comment(line: str) -> str:
    # Good enough for this tree: no `//` inside string literals on import lines.
    in_str = False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            in_str = not in_str
        elif not in_str and line.startswith("//", i):
            return line[:i]
    return line


def main() -> int:
    src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    violations, unknown = [], set()
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src)
        top = rel.parts[0].removesuffix(".rs")
        if top in ("lib", "main") or top == "bin":
            continue
        if top not in LAYERS:
            unknown.add(top)
            continue
        mine = LAYERS[top]
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            line = strip_comment(raw)
            used = PATH.findall(line)
            for group in GROUP.findall(line):
                used += [g.strip().split("::")[0] for g in group.split(",") if g.strip()]
            for module in used:
                if module == top or module not in LAYERS:
                    if module not in LAYERS and module not in ("self", "super"):
                        unknown.add(module)
                    continue
                if LAYERS[module] > mine:
                    violations.append(
                        f"{path}:{n}: {top} (layer {mine}) uses {module} (layer {LAYERS[module]}): {raw.strip()}"
                    )
    for v in violations:
        print(v)
    if unknown:
        print(f"check-layers: modules with no layer: {', '.join(sorted(unknown))} (add them to LAYERS)")
    print(f"layer check: {len(violations)} violations")
    return 1 if violations or unknown else 0


if __name__ == "__main__":
    sys.exit(main())
