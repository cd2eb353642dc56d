"""Isolation and hardening properties of the deployment files.

Reads deploy/compose/ (docker-compose.yml, and the configuration directory it mounts at
/etc/portcullis: portcullis/portcullis.toml and portcullis/allowlist.toml), the
Kubernetes manifests in deploy/k8s/, and the final stage of ./Dockerfile, and checks what
the deployment promises: the gate is the agents' only way out, every service is hardened,
the mounted configuration file is the single source of the gate's settings (no
PORTCULLIS_* variable overrides it, neither in the image nor in the stack), and the
configuration the stack ships is one the real binary accepts, and the gate's Kubernetes
NetworkPolicy is the one the binary derives from the shipped ConfigMap (its allowlist's
ports, its upstreams', its listeners').

Each property is a `check_*` function that returns the problems it finds (an empty list
when the property holds). `StackTests` asserts every check passes on the files;
`ChecksCanFail` breaks each property in a copy of the parsed files and asserts the check
notices, so no check can pass vacuously.

Run: python3 tests/deploy/test_stack.py (or scripts/validate-deploy.sh, which installs
PyYAML in its venv). Environment:
  PORTCULLIS_BIN    the binary for `config check` (default target/debug/portcullis;
                    those checks are skipped with a message when it is absent)
  CI                `true`: a skipped test counts as failed
  DEPLOY_DIR        the deploy/ directory to check (default: the repository's)
"""

import copy
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DEPLOY = Path(os.environ.get("DEPLOY_DIR", REPO / "deploy"))
COMPOSE_DIR = DEPLOY / "compose"
# The compose stack's configuration directory, mounted over /etc/portcullis.
COMPOSE_CONFIG_DIR = COMPOSE_DIR / "portcullis"
K8S_DIR = DEPLOY / "k8s"

GATE = "portcullis"
# Services that must have no way out but the gate.
AGENT_TIER = ("agent", "litellm")
ADMIN_PORT = 9953
PROXY_PORT = 3128
# Routed mode's listeners: the ports agents dial (the gate dials origins on the same port).
ROUTED_TLS_PORT = 443
ROUTED_HTTP_PORT = 80
# What a client in routed mode must not be given: proxy settings (of any case) send its
# traffic to the proxy instead, and their absence is what routed mode is for.
PROXY_ENV = {"https_proxy", "http_proxy", "all_proxy", "no_proxy", "grpc_proxy", "node_use_env_proxy"}
HEALTHCHECK = ["CMD", "/usr/local/bin/portcullis", "health"]
TMPFS_FLAGS = {"noexec", "nosuid", "nodev"}
PRIVATE_V4 = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")
]
# The image: its configuration directory, and the one variable it sets.
CONFIG_MOUNT = "/etc/portcullis"
IMAGE_ENV = {"PORTCULLIS_CONFIG": f"{CONFIG_MOUNT}/portcullis.toml"}
CACHE_MOUNT = "/var/cache/portcullis"
# `[proxy] drain_secs` when the file does not set it, and the least time a grace period
# must leave after it (and after a preStop hook) for the gate to close the rest and exit.
DEFAULT_DRAIN_SECS = 20
GRACE_MARGIN_SECS = 5
# Compose's stop_grace_period and Kubernetes' terminationGracePeriodSeconds when unset.
COMPOSE_DEFAULT_GRACE = 10
K8S_DEFAULT_GRACE = 30
SECRETS_DIR = "/run/secrets"
# The gate's own NetworkPolicy: generated from the ConfigMap by the binary, never edited.
GATE_POLICY_FILE = "networkpolicy-gate.yaml"
# The least preStop delay that lets the endpoints controller and kube-proxy drop a pod
# from the Services before the gate stops accepting.
MIN_PRESTOP_SECS = 5


def binary():
    path = Path(os.environ.get("PORTCULLIS_BIN", REPO / "target" / "debug" / "portcullis"))
    return path if path.is_file() and os.access(path, os.X_OK) else None


def read_text(path):
    return path.read_text(encoding="utf-8") if path.is_file() else None


# --------------------------------------------------------------------------------------
# Loading


class Stack:
    """The parsed deployment files."""

    def __init__(self):
        with open(COMPOSE_DIR / "docker-compose.yml", encoding="utf-8") as f:
            self.compose = yaml.safe_load(f)
        with open(COMPOSE_CONFIG_DIR / "portcullis.toml", "rb") as f:
            self.gate_config = tomllib.load(f)
        allowlist = COMPOSE_CONFIG_DIR / self.gate_config.get("allowlist", "allowlist.toml")
        with open(allowlist, "rb") as f:
            self.allowlist = tomllib.load(f)
        # The text of ./Dockerfile (None without one); image_env parses its final stage.
        self.dockerfile = read_text(REPO / "Dockerfile")
        # deploy/compose/secrets/.gitignore: keeps the admin token out of git.
        self.secrets_gitignore = read_text(COMPOSE_DIR / "secrets" / ".gitignore")
        with open(K8S_DIR / "kustomization.yaml", encoding="utf-8") as f:
            self.kustomization = yaml.safe_load(f)
        self.k8s_files = sorted(
            p.name for p in K8S_DIR.iterdir() if p.suffix in (".yaml", ".yml")
        )
        self.k8s = []  # (file, document)
        for name in self.kustomization.get("resources", []):
            path = K8S_DIR / name
            if not path.is_file():
                continue
            with open(path, encoding="utf-8") as f:
                self.k8s.extend((name, d) for d in yaml.safe_load_all(f) if d)
        # The generated policy's text, compared byte for byte with the binary's output.
        self.gate_policy_text = read_text(K8S_DIR / GATE_POLICY_FILE)

    @property
    def image_env(self):
        return dockerfile_env(self.dockerfile or "")

    # -- compose helpers

    def services(self):
        return self.compose.get("services") or {}

    def networks(self):
        return self.compose.get("networks") or {}

    def k8s_kind(self, kind):
        return [d for _, d in self.k8s if d.get("kind") == kind]


def dockerfile_env(text):
    """ENV of a Dockerfile's final stage, from its text."""
    text = text.replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            env = {}
        elif words[0].upper() == "ENV" and len(words) == 2:
            tokens = shlex.split(words[1])
            if tokens and "=" not in tokens[0]:
                env[tokens[0]] = " ".join(tokens[1:])
            else:
                env.update(t.split("=", 1) for t in tokens if "=" in t)
    return env


LISTEN_VARS = {
    "dns": "PORTCULLIS_DNS_LISTEN",
    "proxy": "PORTCULLIS_PROXY_LISTEN",
    "admin": "PORTCULLIS_ADMIN_LISTEN",
}


def overriding_vars(env):
    """The variables of `env` that override a key of the configuration file: every
    PORTCULLIS_* the binary reads but PORTCULLIS_CONFIG (which names the file), and
    RUST_LOG (over [log] level)."""
    return sorted(
        k for k in env if (k.startswith("PORTCULLIS_") and k != "PORTCULLIS_CONFIG") or k == "RUST_LOG"
    )


def gate_env(stack):
    """The gate container's environment in the compose stack: the image's, then the service's."""
    return {**stack.image_env, **env_of(stack.services().get(GATE, {}))}


def effective_listen(stack, section):
    """The gate's listen addresses in the compose stack, as the binary applies them: a
    variable (the service's over the image's) wins over portcullis.toml. The stack sets
    none (check_compose_file_is_the_truth), so this is the file's."""
    var = LISTEN_VARS[section]
    env = gate_env(stack)
    if var in env:
        return listen_ips([a.strip() for a in env[var].split(",") if a.strip()])
    return listen_ips(stack.gate_config.get(section, {}).get("listen", []))


def config_path_of(command_or_args, env):
    """The configuration file the gate reads: `--config FILE` in its arguments, else
    PORTCULLIS_CONFIG."""
    args = [str(a) for a in as_list(command_or_args)]
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return env.get("PORTCULLIS_CONFIG")


def in_dir(path, directory):
    """Whether the absolute POSIX path `path` lies inside `directory` (no `..` tricks)."""
    if not path or not str(path).startswith("/"):
        return False
    p = PurePosixPath(os.path.normpath(str(path)))
    return PurePosixPath(directory) in p.parents


def resolve_in(config_path, path):
    """A path from a config file, resolved as the binary does (against the file's directory)."""
    if path is None:
        return None
    if str(path).startswith("/"):
        return os.path.normpath(str(path))
    return os.path.normpath(str(PurePosixPath(config_path).parent / str(path)))


def parse_duration(value):
    """Seconds of a Compose duration (`30s`, `1m30s`, `1.5s`, `500ms`), or None."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * scale[u] for n, u in parts)


def drain_secs(config):
    return config.get("proxy", {}).get("drain_secs", DEFAULT_DRAIN_SECS)


def service_networks(service):
    """Network name -> per-service settings (dict) for a compose service."""
    nets = service.get("networks")
    if nets is None:
        return {} if service.get("network_mode") else {"default": {}}
    if isinstance(nets, list):
        return {n: {} for n in nets}
    return {n: (v or {}) for n, v in nets.items()}


def network_internal(stack, name):
    net = stack.networks().get(name) or {}
    return net.get("internal") is True and not net.get("external")


def env_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def parse_port(entry):
    """(host_ip, host_port, container_port) of a compose port mapping."""
    if isinstance(entry, dict):
        return entry.get("host_ip"), entry.get("published"), entry.get("target")
    text = str(entry).split("/", 1)[0]
    host_ip = None
    if text.startswith("["):
        host_ip, _, text = text[1:].partition("]")
        text = text.lstrip(":")
    parts = text.split(":")
    if len(parts) == 3:
        host_ip, host, container = parts
    elif len(parts) == 2:
        host, container = parts
    else:
        host, container = None, parts[0]
    return host_ip, host, container


def gate_static_ip(stack, network):
    settings = service_networks(stack.services().get(GATE, {})).get(network, {})
    return settings.get("ipv4_address")


def agent_tier_networks(stack):
    names = set()
    for svc in AGENT_TIER:
        names.update(service_networks(stack.services().get(svc, {})))
    return names


def gate_agent_network(stack):
    """The internal network the gate shares with the agent tier (by the agent's networks)."""
    agent_nets = service_networks(stack.services().get("agent", {}))
    gate_nets = service_networks(stack.services().get(GATE, {}))
    shared = [n for n in agent_nets if n in gate_nets]
    return shared[0] if shared else None


def listen_ips(addresses):
    out = []
    for a in addresses:
        host, _, port = a.rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


def tmpfs_problems(where, entries):
    problems = []
    for entry in as_list(entries):
        path, _, options = str(entry).partition(":")
        flags = {o.strip() for o in options.split(",") if o.strip()}
        missing = TMPFS_FLAGS - flags
        if missing:
            problems.append(f"{where}: tmpfs {path} lacks {sorted(missing)}")
    return problems


# --------------------------------------------------------------------------------------
# Compose checks


def check_compose_services_present(stack):
    missing = [s for s in (GATE, *AGENT_TIER) if s not in stack.services()]
    return [f"service {s} missing" for s in missing]


def check_agent_tier_internal(stack):
    problems = []
    for svc in AGENT_TIER:
        service = stack.services().get(svc, {})
        if service.get("network_mode"):
            problems.append(f"{svc}: network_mode {service['network_mode']!r}")
        for net in service_networks(service):
            if not network_internal(stack, net):
                problems.append(f"{svc} is on network {net}, which is not internal: true")
    if gate_agent_network(stack) is None:
        problems.append("the gate shares no network with the agent")
    return problems


def check_only_gate_on_egress(stack):
    problems = []
    egress = set()
    for name, service in stack.services().items():
        mode = service.get("network_mode")
        if mode:
            problems.append(f"{name}: network_mode {mode!r} (host or shared namespaces)")
        for net in service_networks(service):
            if not network_internal(stack, net):
                egress.add(net)
                if name != GATE:
                    problems.append(f"{name} is on the non-internal network {net}")
    if not egress:
        problems.append("no non-internal network: the gate has no way out")
    for net in egress:
        if net not in service_networks(stack.services().get(GATE, {})):
            problems.append(f"non-internal network {net} without the gate")
    return problems


def check_agent_tier_dns_is_gate(stack):
    problems = []
    net = gate_agent_network(stack)
    ip = gate_static_ip(stack, net) if net else None
    if not ip:
        return [f"the gate has no static ipv4_address on the agent network {net}"]
    subnets = [
        c.get("subnet")
        for c in ((stack.networks().get(net) or {}).get("ipam") or {}).get("config", [])
    ]
    if not any(s and ipaddress.ip_address(ip) in ipaddress.ip_network(s) for s in subnets):
        problems.append(f"gate address {ip} is not in a configured subnet of {net}")
    for svc in AGENT_TIER:
        dns = [str(d) for d in as_list(stack.services().get(svc, {}).get("dns"))]
        if not dns or any(d != ip for d in dns):
            problems.append(f"{svc}: dns {dns} is not exactly the gate's {ip}")
    listening = effective_listen(stack, "dns")
    if not any(h in (ip, "0.0.0.0") and p == 53 for h, p in listening):
        problems.append(f"the gate's DNS listeners {listening} do not serve {ip}:53")
    return problems


def dns_mode(config, group):
    """The DNS mode of `group` in a gate configuration (`[dns] modes`, else `mode`)."""
    dns = config.get("dns") or {}
    return (dns.get("modes") or {}).get(group, dns.get("mode", "public"))


def group_of(groups, networks):
    """The group whose CIDRs hold every one of `networks` with the longest prefix, as the
    gate picks a client's group (longest prefix wins), or `default`."""
    best, best_len = "default", -1
    for name, cidrs in (groups or {}).items():
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr)
            if networks and all(n.version == net.version and n.subnet_of(net) for n in networks):
                if net.prefixlen > best_len:
                    best, best_len = name, net.prefixlen
    return best


def service_group(stack, svc):
    """The client group of an agent-tier service: by its static address on the gate's
    network, else by the network's dynamic range (where Docker puts it)."""
    net = gate_agent_network(stack)
    settings = service_networks(stack.services().get(svc, {})).get(net, {})
    if settings.get("ipv4_address"):
        nets = [ipaddress.ip_network(f"{settings['ipv4_address']}/32")]
    else:
        config = ((stack.networks().get(net) or {}).get("ipam") or {}).get("config", [])
        nets = [ipaddress.ip_network(c.get("ip_range") or c["subnet"]) for c in config if c.get("subnet")]
    return group_of(stack.gate_config.get("groups"), nets)


def routed_listen(config, key):
    return listen_ips((config.get("routed") or {}).get(key, []))


def check_agent_tier_proxy_env(stack):
    """Services in a group that is not in routed mode reach the outside through the proxy."""
    problems = []
    net = gate_agent_network(stack)
    gate_hosts = {GATE, gate_static_ip(stack, net)}
    proxy_listen = effective_listen(stack, "proxy")
    proxy_ports = {p for h, p in proxy_listen if h in gate_hosts | {"0.0.0.0"}}
    for svc in AGENT_TIER:
        if dns_mode(stack.gate_config, service_group(stack, svc)) == "routed":
            continue
        env = env_of(stack.services().get(svc, {}))
        for var in ("HTTPS_PROXY", "HTTP_PROXY"):
            values = [env.get(var)] + ([env[var.lower()]] if var.lower() in env else [])
            for value in values:
                url = urlsplit(value or "")
                if url.scheme != "http" or url.hostname not in gate_hosts:
                    problems.append(f"{svc}: {var}={value!r} is not the gate")
                elif url.port not in proxy_ports:
                    problems.append(f"{svc}: {var} port {url.port} is not a proxy listener {proxy_ports}")
        no_proxy = [h.strip() for h in env.get("NO_PROXY", "").split(",") if h.strip()]
        if not no_proxy:
            problems.append(f"{svc}: NO_PROXY missing")
        if "*" in no_proxy:
            problems.append(f"{svc}: NO_PROXY='*' sends everything around the gate")
        others = [s for s in AGENT_TIER if s != svc]
        if not any(o in no_proxy for o in others):
            problems.append(f"{svc}: NO_PROXY {no_proxy} does not name its own tier {others}")
    return problems


def check_compose_routed_agent(stack):
    """The agent is in routed mode: no proxy variable, the gate's DNS answers its allowed
    names with the gate's agent-tier address, and the routed listeners serve that address
    on 443 and 80, and no other network of the gate."""
    problems = []
    net = gate_agent_network(stack)
    ip = gate_static_ip(stack, net)
    config = stack.gate_config
    group = service_group(stack, "agent")
    if dns_mode(config, group) != "routed":
        problems.append(f"agent: its group {group} is in DNS mode {dns_mode(config, group)!r}, not routed")
    routed = [s for s in AGENT_TIER if dns_mode(config, service_group(stack, s)) == "routed"]
    for svc in routed:
        env = env_of(stack.services().get(svc, {}))
        for var in sorted(k for k in env if k.lower() in PROXY_ENV):
            problems.append(f"{svc}: routed mode, yet {var} is set (its clients would use the proxy)")
        if stack.services().get(svc, {}).get("env_file"):
            problems.append(f"{svc}: env_file can set proxy variables unseen")
        addresses = ((config.get("dns") or {}).get("routed_addresses") or {}).get(service_group(stack, svc))
        if addresses is not None and [str(a) for a in addresses] != [ip]:
            problems.append(f"{svc}: routed_addresses {addresses} are not the gate's agent-tier address {ip}")
        if addresses is None and any(h != ip for h, _ in effective_listen(stack, "dns")):
            problems.append(f"{svc}: no routed_addresses, and DNS listens beyond {ip}: answers could carry another address")
    if not routed:
        return problems
    for key, port in (("tls_listen", ROUTED_TLS_PORT), ("http_listen", ROUTED_HTTP_PORT)):
        listening = routed_listen(config, key)
        if (ip, port) not in listening:
            problems.append(f"[routed] {key} {listening} does not serve {ip}:{port}")
        for host, p in listening:
            if host != ip:
                problems.append(f"[routed] {key} on {host}:{p}: beyond the agent tier's {ip}")
    sysctls = stack.services().get(GATE, {}).get("sysctls") or {}
    if isinstance(sysctls, list):
        sysctls = dict(str(x).split("=", 1) for x in sysctls)
    floor = sysctls.get("net.ipv4.ip_unprivileged_port_start")
    if floor is None or int(floor) > ROUTED_HTTP_PORT:
        problems.append(f"gate: ip_unprivileged_port_start={floor!r}: uid 65534 cannot bind {ROUTED_HTTP_PORT}")
    return problems


def check_published_ports(stack):
    problems = []
    for name, service in stack.services().items():
        for entry in as_list(service.get("ports")):
            host_ip, _, container = parse_port(entry)
            if name != GATE:
                problems.append(f"{name} publishes {entry!r}")
            elif host_ip not in ("127.0.0.1", "::1") or str(container) != str(ADMIN_PORT):
                problems.append(f"{name} publishes {entry!r}: only {ADMIN_PORT} on 127.0.0.1")
    return problems


def check_services_hardened(stack):
    problems = []
    for name, service in stack.services().items():
        limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        if service.get("read_only") is not True:
            problems.append(f"{name}: read_only is not true")
        if "ALL" not in [str(c).upper() for c in as_list(service.get("cap_drop"))]:
            problems.append(f"{name}: cap_drop lacks ALL")
        if service.get("cap_add"):
            problems.append(f"{name}: cap_add {service['cap_add']}")
        if service.get("privileged"):
            problems.append(f"{name}: privileged")
        opts = [str(o).replace("=", ":") for o in as_list(service.get("security_opt"))]
        if not any(o in ("no-new-privileges", "no-new-privileges:true") for o in opts):
            problems.append(f"{name}: security_opt lacks no-new-privileges:true")
        if not (service.get("mem_limit") or limits.get("memory")):
            problems.append(f"{name}: no memory limit")
        if not (service.get("cpus") or limits.get("cpus")):
            problems.append(f"{name}: no CPU limit")
        pids = service.get("pids_limit") or limits.get("pids")
        if not pids or int(pids) <= 0:
            problems.append(f"{name}: no PID limit")
        problems += tmpfs_problems(name, service.get("tmpfs"))
        for volume in as_list(service.get("volumes")):
            if isinstance(volume, dict) and volume.get("type") == "tmpfs":
                problems.append(f"{name}: tmpfs volume {volume.get('target')} cannot carry noexec,nosuid,nodev: use tmpfs:")
    return problems


def check_gate_sysctl_and_healthcheck(stack):
    problems = []
    gate = stack.services().get(GATE, {})
    sysctls = gate.get("sysctls") or {}
    if isinstance(sysctls, list):
        sysctls = dict(str(s).split("=", 1) for s in sysctls)
    start = sysctls.get("net.ipv4.ip_unprivileged_port_start")
    if start is None or int(start) > 53:
        problems.append(f"gate: sysctl net.ipv4.ip_unprivileged_port_start={start!r}, need <= 53")
    # A container's namespace copies IPv4 forwarding from the host (a Docker host forwards):
    # an agent routing through the gate's address would get past it.
    forward = sysctls.get("net.ipv4.ip_forward")
    if str(forward).strip() != "0":
        problems.append(f"gate: sysctl net.ipv4.ip_forward={forward!r}, need 0 (the gate is no router)")
    test = (gate.get("healthcheck") or {}).get("test")
    if as_list(test)[: len(HEALTHCHECK)] != HEALTHCHECK:
        problems.append(f"gate: healthcheck {test!r} is not {HEALTHCHECK}")
    if str(gate.get("user", "65534:65534")) != "65534:65534":
        problems.append(f"gate: user {gate.get('user')!r}")
    if not any(
        str(v).split(":")[1:2] == [CACHE_MOUNT] for v in as_list(gate.get("volumes"))
    ) and CACHE_MOUNT not in " ".join(map(str, as_list(gate.get("tmpfs")))):
        problems.append(f"gate: no volume or tmpfs for {CACHE_MOUNT}")
    cache_dir = gate_env(stack).get("PORTCULLIS_CACHE_DIR") or (stack.gate_config.get("sources") or {}).get("cache_dir")
    if not in_dir(cache_dir, CACHE_MOUNT):
        problems.append(f"gate: cache_dir {cache_dir!r} is not on the cache volume {CACHE_MOUNT} (the root is read-only)")
    return problems


def check_admin_off_agent_tier(stack):
    """The admin listener: reachable by the healthcheck and the host mapping, never the agents."""
    problems = []
    net = gate_agent_network(stack)
    agent_ip = gate_static_ip(stack, net)
    admin = effective_listen(stack, "admin")
    for host, port in admin:
        if host in ("0.0.0.0", "::", agent_ip):
            problems.append(f"admin listens on {host}:{port}, reachable from the agent tier")
    if ("127.0.0.1", ADMIN_PORT) not in admin:
        problems.append("admin does not listen on 127.0.0.1:9953 (the healthcheck's default URL)")
    gate_nets = service_networks(stack.services().get(GATE, {}))
    egress_ips = {
        s.get("ipv4_address") for n, s in gate_nets.items() if not network_internal(stack, n)
    }
    if stack.services().get(GATE, {}).get("ports") and not any(
        h in egress_ips and p == ADMIN_PORT for h, p in admin
    ):
        problems.append("the published admin port reaches no listener on the gate's egress address")
    return problems


def check_compose_file_is_the_truth(stack):
    """No variable overrides portcullis.toml: not in the image, not in the gate's service."""
    problems = []
    gate = stack.services().get(GATE, {})
    for var in overriding_vars(env_of(gate)):
        problems.append(f"gate: environment sets {var}, which overrides portcullis.toml")
    for var in overriding_vars(stack.image_env):
        problems.append(f"the image sets {var}, which overrides the mounted portcullis.toml")
    if gate.get("env_file"):
        problems.append(f"gate: env_file {gate['env_file']!r} can set PORTCULLIS_* variables unseen")
    return problems


def compose_mounts(service):
    """(source, target, read_only, type) of each volume of a compose service."""
    out = []
    for volume in as_list(service.get("volumes")):
        if isinstance(volume, dict):
            out.append((
                volume.get("source"), volume.get("target"),
                volume.get("read_only") is True, volume.get("type", "volume"),
            ))
            continue
        parts = str(volume).split(":")
        if len(parts) == 1:
            out.append((None, parts[0], False, "volume"))
            continue
        source, target = parts[0], parts[1]
        options = set(parts[2].split(",")) if len(parts) > 2 else set()
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        out.append((source, target, "ro" in options, kind))
    return out


def check_compose_config_directory(stack):
    """The configuration directory is mounted whole (not file by file), read-only, at the
    path the gate reads, and holds every file the configuration names."""
    problems = []
    gate = stack.services().get(GATE, {})
    mounts = compose_mounts(gate)
    config_mounts = [m for m in mounts if os.path.normpath(str(m[1])) == CONFIG_MOUNT]
    for source, target, _, _ in mounts:
        if in_dir(target, CONFIG_MOUNT):
            problems.append(
                f"gate: {source} mounted at {target}, inside {CONFIG_MOUNT}: mount the directory only"
                " (a single-file mount never sees an edit that replaces the file)"
            )
    if len(config_mounts) != 1:
        return problems + [f"gate: {len(config_mounts)} mounts at {CONFIG_MOUNT}, need exactly one (the directory)"]
    source, _, read_only, kind = config_mounts[0]
    if kind != "bind" or not source:
        problems.append(f"gate: {CONFIG_MOUNT} is a {kind} {source!r}, not the stack's directory")
    elif (COMPOSE_DIR / source).resolve() != COMPOSE_CONFIG_DIR.resolve():
        problems.append(f"gate: {CONFIG_MOUNT} is {source}, not {COMPOSE_CONFIG_DIR.relative_to(COMPOSE_DIR)}/ (the files checked here)")
    elif not (COMPOSE_DIR / source).is_dir():
        problems.append(f"gate: {source} is not a directory")
    if not read_only:
        problems.append(f"gate: {CONFIG_MOUNT} is not mounted read-only")
    config = config_path_of(gate.get("command"), gate_env(stack))
    if not in_dir(config, CONFIG_MOUNT):
        return problems + [f"gate: reads the configuration {config!r}, not a file in {CONFIG_MOUNT}"]
    config = os.path.normpath(config)
    rel = PurePosixPath(config).relative_to(CONFIG_MOUNT)
    if not (COMPOSE_CONFIG_DIR / rel).is_file():
        problems.append(f"gate: reads {config}, which the mounted directory does not hold")
    named = [("allowlist", stack.gate_config.get("allowlist"))]
    named += [(f"list {l.get('name')}", l.get("path")) for l in stack.gate_config.get("lists", []) if l.get("path")]
    for what, path in named:
        if path is None:
            continue
        where = resolve_in(config, path)
        if not in_dir(where, CONFIG_MOUNT):
            problems.append(f"the {what} {path!r} is {where}, outside the mounted {CONFIG_MOUNT}")
        elif not (COMPOSE_CONFIG_DIR / PurePosixPath(where).relative_to(CONFIG_MOUNT)).is_file():
            problems.append(f"the {what} {where} is not in {COMPOSE_CONFIG_DIR.relative_to(COMPOSE_DIR)}/")
    return problems


def secret_target(entry):
    """(name, path in the container) of a service's secret entry."""
    if isinstance(entry, dict):
        name = entry.get("source")
        target = entry.get("target") or name
    else:
        name = target = str(entry)
    target = str(target)
    return name, os.path.normpath(target if target.startswith("/") else f"{SECRETS_DIR}/{target}")


def gitignore_hides_all_but_itself(text):
    lines = [l.strip() for l in (text or "").splitlines() if l.strip() and not l.strip().startswith("#")]
    return "*" in lines and all(l in ("*", "!.gitignore") for l in lines)


def check_compose_admin_token(stack):
    """`[admin] token_file` is a compose secret from a git-ignored file, the gate's only."""
    problems = []
    token_file = (stack.gate_config.get("admin") or {}).get("token_file")
    if not token_file:
        return ["portcullis.toml has no [admin] token_file: the POST endpoints are disabled"]
    if not str(token_file).startswith(SECRETS_DIR + "/"):
        problems.append(f"token_file {token_file!r} is not a secret under {SECRETS_DIR}")
    gate = stack.services().get(GATE, {})
    by_path = dict(secret_target(e)[::-1] for e in as_list(gate.get("secrets")))
    name = by_path.get(os.path.normpath(str(token_file)))
    if not name:
        return problems + [f"gate: no secret mounted at {token_file} ({sorted(by_path)})"]
    definition = (stack.compose.get("secrets") or {}).get(name)
    if not isinstance(definition, dict) or not definition.get("file"):
        return problems + [f"secret {name}: not defined with `file:` at the top level"]
    source = Path(definition["file"])
    if source.is_absolute() or (COMPOSE_DIR / source).resolve().parent != (COMPOSE_DIR / "secrets").resolve():
        problems.append(f"secret {name}: file {definition['file']} is not in ./secrets/")
    if not gitignore_hides_all_but_itself(stack.secrets_gitignore):
        problems.append("secrets/.gitignore does not ignore everything but itself: the token could be committed")
    for svc, service in stack.services().items():
        if svc != GATE and name in {secret_target(e)[0] for e in as_list(service.get("secrets"))}:
            problems.append(f"{svc} gets the gate's admin token")
    return problems


def check_gate_stop_grace(stack):
    """Compose waits longer than `[proxy] drain_secs` before it kills the gate."""
    gate = stack.services().get(GATE, {})
    grace = parse_duration(gate.get("stop_grace_period", f"{COMPOSE_DEFAULT_GRACE}s"))
    drain = drain_secs(stack.gate_config)
    if grace is None:
        return [f"gate: stop_grace_period {gate.get('stop_grace_period')!r} is no duration"]
    if grace < drain + GRACE_MARGIN_SECS:
        return [f"gate: stop_grace_period {grace:g}s is not at least drain_secs {drain} + {GRACE_MARGIN_SECS}s"]
    return []


def check_groups_match_addresses(stack):
    problems = []
    groups = stack.gate_config.get("groups", {})
    net = gate_agent_network(stack)
    subnets = [
        ipaddress.ip_network(c["subnet"])
        for c in ((stack.networks().get(net) or {}).get("ipam") or {}).get("config", [])
        if c.get("subnet")
    ]
    agent_nets = [ipaddress.ip_network(n) for n in groups.get("agent", [])]
    for subnet in subnets:
        if not any(subnet.subnet_of(n) for n in agent_nets if n.version == subnet.version):
            problems.append(f"group agent {agent_nets} does not cover the agent tier {subnet}")
    litellm_ip = service_networks(stack.services().get("litellm", {})).get(net, {}).get("ipv4_address")
    litellm_nets = [ipaddress.ip_network(n) for n in groups.get("litellm", [])]
    if not litellm_ip:
        problems.append("litellm has no static address on the agent tier")
    elif ipaddress.ip_network(f"{litellm_ip}/32") not in litellm_nets:
        problems.append(f"group litellm {litellm_nets} is not exactly {litellm_ip}/32")
    return problems


def check_private_rules(stack):
    problems = []
    rules = stack.allowlist.get("allow", [])
    for rule in rules:
        if rule.get("private") and rule.get("groups") != ["litellm"]:
            problems.append(f"private rule {rule.get('host')} is not limited to groups ['litellm']")
    ollama = [
        r for r in rules
        if r.get("host") == "host.docker.internal" and r.get("private") is True
        and 11434 in r.get("ports", []) and r.get("groups") == ["litellm"]
    ]
    if not ollama:
        problems.append("no private = true rule for host.docker.internal:11434 for litellm")
    return problems


# --------------------------------------------------------------------------------------
# The image


def check_image_env(stack):
    """The image's final stage sets PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml and no
    variable that overrides the configuration file (a mounted file is the whole truth)."""
    if stack.dockerfile is None:
        return ["no ./Dockerfile"]
    env = stack.image_env
    problems = [
        f"the image sets {var}={env[var]}: a mounted portcullis.toml cannot change that setting"
        for var in overriding_vars(env)
    ]
    for var, want in IMAGE_ENV.items():
        if env.get(var) != want:
            problems.append(f"the image sets {var}={env.get(var)!r}, not {want}")
    return problems


# --------------------------------------------------------------------------------------
# Kubernetes checks


def deployment(stack):
    deps = [d for d in stack.k8s_kind("Deployment") if d["metadata"]["name"] == GATE]
    return deps[0] if deps else {}


def pod_spec(stack):
    return ((deployment(stack).get("spec") or {}).get("template") or {}).get("spec") or {}


def pod_labels(stack):
    return (((deployment(stack).get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def gate_container(stack):
    containers = pod_spec(stack).get("containers") or []
    return containers[0] if containers else {}


def container_port(stack, port):
    """A container port by number or name -> (number, protocol) list."""
    out = []
    for p in gate_container(stack).get("ports") or []:
        if port in (p.get("name"), p.get("containerPort")):
            out.append((p.get("containerPort"), p.get("protocol", "TCP")))
    return out


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_k8s_files_listed(stack):
    listed = set(stack.kustomization.get("resources", []))
    present = set(stack.k8s_files) - {"kustomization.yaml"}
    problems = [f"{f} is not in kustomization.yaml" for f in sorted(present - listed)]
    problems += [f"kustomization.yaml lists missing {f}" for f in sorted(listed - present)]
    return problems


def check_k8s_restricted(stack):
    problems = []
    dep = deployment(stack)
    if not dep:
        return ["no Deployment named portcullis"]
    if (dep["spec"].get("replicas") or 1) < 2:
        problems.append(f"replicas {dep['spec'].get('replicas')} < 2")
    spec = pod_spec(stack)
    psc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"pod {key}")
    if psc.get("runAsNonRoot") is not True:
        problems.append("pod runAsNonRoot is not true")
    if psc.get("runAsUser") != 65534 or psc.get("runAsGroup") != 65534:
        problems.append("pod runAsUser/runAsGroup are not 65534")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile is not RuntimeDefault")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"hostPath volume {volume.get('name')}")
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        sc = c.get("securityContext") or {}
        name = c.get("name")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if caps.get("add"):
            problems.append(f"{name}: capabilities add {caps['add']}")
        if sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
            problems.append(f"{name}: runs as root")
        if sc.get("seccompProfile", {}).get("type", "RuntimeDefault") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile overridden")
    return problems


def check_k8s_probes_and_spread(stack):
    problems = []
    c = gate_container(stack)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path:
            problems.append(f"{probe} path {get.get('path')!r} is not {path}")
        if [p for p, _ in container_port(stack, get.get("port"))] != [ADMIN_PORT]:
            problems.append(f"{probe} port {get.get('port')!r} is not the admin port")
    spec = pod_spec(stack)
    anti = ((spec.get("affinity") or {}).get("podAntiAffinity")) or {}
    if not spec.get("topologySpreadConstraints") and not anti:
        problems.append("no topology spread constraints or pod anti-affinity")
    return problems


def check_k8s_configmap_directory(stack):
    problems = []
    spec = pod_spec(stack)
    cm_names = {d["metadata"]["name"] for d in stack.k8s_kind("ConfigMap")}
    cm_volumes = {
        v["name"]: v["configMap"].get("name") for v in spec.get("volumes") or [] if "configMap" in v
    }
    if not cm_volumes:
        problems.append("no ConfigMap volume")
    for volume in spec.get("volumes") or []:
        cm = (volume.get("configMap") or {})
        if not cm:
            continue
        if cm.get("name") not in cm_names:
            problems.append(f"volume {volume['name']}: ConfigMap {cm.get('name')} is not in the manifests")
        if cm.get("items"):
            problems.append(f"volume {volume['name']}: items narrows the directory")
    mounts = [m for m in gate_container(stack).get("volumeMounts") or [] if m.get("name") in cm_volumes]
    if not mounts:
        problems.append("the ConfigMap volume is not mounted")
    for m in mounts:
        if m.get("subPath") or m.get("subPathExpr"):
            problems.append(f"mount {m['mountPath']} uses subPath: ConfigMap updates never reach it")
    cm = k8s_gate_config(stack)
    config = tomllib.loads(cm["data"]["portcullis.toml"]) if cm else {}
    eff = k8s_effective(stack, config)
    for what, path in (("config", eff["config"]), ("allowlist", eff["allowlist"])):
        if what == "allowlist" and path is None:
            continue
        mount = next((m["mountPath"] for m in mounts if in_dir(path, m["mountPath"])), None)
        path = os.path.normpath(path) if path else path
        if not mount:
            problems.append(f"the {what} path {path!r} is not in the ConfigMap directory")
        elif cm and str(PurePosixPath(path).relative_to(mount)) not in (cm.get("data") or {}):
            problems.append(f"the {what} path {path!r} is no key of the ConfigMap")
    return problems


def k8s_gate_config(stack):
    cms = [d for d in stack.k8s_kind("ConfigMap") if "portcullis.toml" in (d.get("data") or {})]
    return cms[0] if cms else None


def k8s_env(stack):
    """The gate container's environment: the image's ENV, then the Deployment's."""
    env = dict(stack.image_env)
    env.update({e["name"]: e.get("value", "") for e in gate_container(stack).get("env") or []})
    return env


def k8s_effective(stack, config):
    """(dns, proxy, admin listeners, config path, allowlist path, cache dir) as the binary
    sees them: a variable (the Deployment's over the image's) wins over the file. The
    Deployment sets none (check_k8s_file_is_the_truth), so these are the ConfigMap's."""
    env = k8s_env(stack)
    out = {}
    for section, var in LISTEN_VARS.items():
        if var in env:
            out[section] = listen_ips([a.strip() for a in env[var].split(",") if a.strip()])
        else:
            out[section] = listen_ips(config.get(section, {}).get("listen", []))
    out["config"] = config_path_of(gate_container(stack).get("args"), env)
    allowlist = config.get("allowlist")
    out["allowlist"] = env.get("PORTCULLIS_ALLOWLIST") or (
        resolve_in(out["config"], allowlist) if allowlist and out["config"] else allowlist
    )
    out["cache_dir"] = env.get("PORTCULLIS_CACHE_DIR") or config.get("sources", {}).get("cache_dir", "")
    out["token_file"] = env.get("PORTCULLIS_ADMIN_TOKEN_FILE") or (
        resolve_in(out["config"] or "/", (config.get("admin") or {}).get("token_file"))
    )
    return out


def check_k8s_file_is_the_truth(stack):
    """The Deployment sets no variable that overrides the ConfigMap's portcullis.toml."""
    problems = []
    c = gate_container(stack)
    for var in overriding_vars({e.get("name"): e for e in c.get("env") or []}):
        problems.append(f"the Deployment sets {var}, which overrides the ConfigMap's portcullis.toml")
    for source in c.get("envFrom") or []:
        problems.append(f"envFrom {source} can set PORTCULLIS_* variables unseen")
    for var in overriding_vars(stack.image_env):
        problems.append(f"the image sets {var}, which overrides the ConfigMap's portcullis.toml")
    cm = k8s_gate_config(stack)
    if not cm:
        return problems + ["no ConfigMap with portcullis.toml"]
    config = tomllib.loads(cm["data"]["portcullis.toml"])
    if not config.get("allowlist") or "allowlist.toml" not in cm["data"]:
        problems.append("the ConfigMap's portcullis.toml names no allowlist.toml of its own")
    return problems


def check_k8s_admin_token(stack):
    """No token, or a token from a required Secret volume (never from the ConfigMap): a
    token_file whose file is missing makes the configuration refuse to load."""
    cm = k8s_gate_config(stack)
    if not cm:
        return ["no ConfigMap with portcullis.toml"]
    token = k8s_effective(stack, tomllib.loads(cm["data"]["portcullis.toml"]))["token_file"]
    if not token:
        return []
    spec = pod_spec(stack)
    secrets = {v["name"]: v["secret"] for v in spec.get("volumes") or [] if "secret" in v}
    for m in gate_container(stack).get("volumeMounts") or []:
        path = m.get("mountPath", "").rstrip("/")
        if m.get("name") in secrets and not m.get("subPath") and in_dir(token, path):
            secret = secrets[m["name"]]
            problems = []
            if secret.get("optional"):
                problems.append(f"Secret volume {m['name']} is optional: without it the gate does not start")
            items = secret.get("items")
            if items and PurePosixPath(token).relative_to(path).as_posix() not in [i.get("path") for i in items]:
                problems.append(f"Secret volume {m['name']}: items leave out {token}")
            return problems
    return [f"token_file {token} is not on a Secret volume mount"]


def prestop_secs(container):
    """Seconds of the container's preStop delay: the `sleep` action, or the exec of
    `portcullis sleep N` (clusters before 1.30); None without one we can read."""
    pre = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre:
        seconds = (pre["sleep"] or {}).get("seconds")
        return seconds if isinstance(seconds, int) else None
    command = [str(c) for c in ((pre.get("exec") or {}).get("command") or [])]
    if len(command) == 3 and PurePosixPath(command[0]).name == "portcullis" and command[1] == "sleep" and command[2].isdigit():
        return int(command[2])
    return None


def check_k8s_termination_grace(stack):
    """A stopping pod first sleeps in preStop (the Services drop it meanwhile), then drains
    for `[proxy] drain_secs`; the kubelet's grace period, counted from the preStop hook,
    covers both and a margin before it kills the gate."""
    cm = k8s_gate_config(stack)
    if not cm:
        return ["no ConfigMap with portcullis.toml"]
    drain = drain_secs(tomllib.loads(cm["data"]["portcullis.toml"]))
    grace = pod_spec(stack).get("terminationGracePeriodSeconds", K8S_DEFAULT_GRACE)
    pre = prestop_secs(gate_container(stack))
    problems = []
    if pre is None:
        problems.append("no preStop sleep: a terminating gate stops accepting while the Services still send it queries")
        pre = 0
    elif pre < MIN_PRESTOP_SECS:
        problems.append(f"preStop sleeps {pre} s, less than {MIN_PRESTOP_SECS} s for the Services to drop the pod")
    if grace < pre + drain + GRACE_MARGIN_SECS:
        problems.append(
            f"terminationGracePeriodSeconds {grace} is not at least preStop {pre} + drain_secs {drain} + {GRACE_MARGIN_SECS}"
        )
    return problems


def check_k8s_ports(stack):
    problems = []
    cm = k8s_gate_config(stack)
    if not cm:
        return ["no ConfigMap with portcullis.toml"]
    config = tomllib.loads(cm["data"]["portcullis.toml"])
    eff = k8s_effective(stack, config)
    dns = eff["dns"]
    if [p for _, p in dns] != [5353]:
        problems.append(f"dns.listen {dns}: the container serves DNS on 5353")
    want = {(5353, "UDP"), (5353, "TCP")}
    if not want <= set(container_port(stack, 5353)):
        problems.append("the container does not declare 5353 UDP and TCP")
    cache = eff["cache_dir"]
    empty_dirs = {v["name"] for v in pod_spec(stack).get("volumes") or [] if "emptyDir" in v}
    cache_mounts = [
        m["mountPath"] for m in gate_container(stack).get("volumeMounts") or [] if m.get("name") in empty_dirs
    ]
    if not any(cache.startswith(m.rstrip("/") + "/") for m in cache_mounts):
        problems.append(f"cache_dir {cache!r} is not on an emptyDir mount {cache_mounts}")
    dns_services = []
    for svc in stack.k8s_kind("Service"):
        spec = svc.get("spec") or {}
        if spec.get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"service {svc['metadata']['name']} is {spec.get('type')}")
        if not matches({"matchLabels": spec.get("selector") or {}}, pod_labels(stack)):
            problems.append(f"service {svc['metadata']['name']} does not select the gate's pods")
        for port in spec.get("ports") or []:
            target = container_port(stack, port.get("targetPort", port.get("port")))
            if not target:
                problems.append(f"service {svc['metadata']['name']} port {port.get('name')} targets nothing")
            if port.get("port") == 53:
                dns_services.append((port.get("protocol", "TCP"), [p for p, _ in target]))
    for proto in ("UDP", "TCP"):
        if (proto, [5353]) not in dns_services:
            problems.append(f"no Service maps 53/{proto} to 5353")
    return problems


def service_target_ports(stack, service):
    """(service port, protocol, container port numbers) of a Service."""
    out = []
    for port in (service.get("spec") or {}).get("ports") or []:
        target = container_port(stack, port.get("targetPort", port.get("port")))
        out.append((port.get("port"), port.get("protocol", "TCP"), [p for p, _ in target]))
    return out


def check_k8s_routed(stack):
    """Agents in routed mode: routed_addresses is the fixed clusterIP of a Service that maps
    443 and 80 to the same ports of the pods (the gate dials the origin on the port a
    connection came in on), the gate listens there and may bind them, and the agents'
    NetworkPolicies let them reach those ports of the gate, and only the gate's."""
    cm = k8s_gate_config(stack)
    if not cm:
        return ["no ConfigMap with portcullis.toml"]
    config = tomllib.loads(cm["data"]["portcullis.toml"])
    problems = []
    if dns_mode(config, "agent") != "routed":
        problems.append(f"group agent is in DNS mode {dns_mode(config, 'agent')!r}, not routed")
    addresses = ((config.get("dns") or {}).get("routed_addresses") or {}).get("agent")
    if not addresses:
        problems.append("no routed_addresses for agent: behind a Service a query arrives on the pod's address")
    routed_services = []
    for svc in stack.k8s_kind("Service"):
        ports = {(p, proto) for p, proto, _ in service_target_ports(stack, svc)}
        if (ROUTED_TLS_PORT, "TCP") in ports:
            routed_services.append(svc)
    if len(routed_services) != 1:
        return problems + [f"{len(routed_services)} Services on port {ROUTED_TLS_PORT}, need one"]
    svc = routed_services[0]
    name, cluster_ip = svc["metadata"]["name"], (svc.get("spec") or {}).get("clusterIP")
    if not cluster_ip or cluster_ip == "None":
        problems.append(f"service {name} has no fixed clusterIP for routed_addresses to name")
    elif addresses and [str(a) for a in addresses] != [cluster_ip]:
        problems.append(f"routed_addresses {addresses} are not service {name}'s clusterIP {cluster_ip}")
    targets = {(p, proto): t for p, proto, t in service_target_ports(stack, svc)}
    for port in (ROUTED_TLS_PORT, ROUTED_HTTP_PORT):
        if targets.get((port, "TCP")) != [port]:
            problems.append(f"service {name} maps {port}/TCP to {targets.get((port, 'TCP'))}, not the pods' {port}")
    for key, port in (("tls_listen", ROUTED_TLS_PORT), ("http_listen", ROUTED_HTTP_PORT)):
        if port not in [p for _, p in routed_listen(config, key)]:
            problems.append(f"[routed] {key} {routed_listen(config, key)} does not serve port {port}")
    sysctls = {s.get("name"): s.get("value") for s in (pod_spec(stack).get("securityContext") or {}).get("sysctls") or []}
    floor = sysctls.get("net.ipv4.ip_unprivileged_port_start")
    if floor is None or int(floor) > ROUTED_HTTP_PORT:
        problems.append(f"pod sysctl ip_unprivileged_port_start={floor!r}: uid 65534 cannot bind {ROUTED_HTTP_PORT}")
    reach = set()
    for p in policies(stack, "agents"):
        for rule in p["spec"].get("egress") or []:
            if rule.get("to") and all(selects_gate(peer, stack) for peer in rule["to"]):
                reach |= {(x.get("protocol", "TCP"), x.get("port")) for x in rule.get("ports") or []}
    gate_ns = deployment(stack).get("metadata", {}).get("namespace")
    admitted = set()
    for p in policies(stack, gate_ns):
        if not matches(p["spec"].get("podSelector") or {}, pod_labels(stack)):
            continue
        for rule in p["spec"].get("ingress") or []:
            from_agents = any(
                ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name") == "agents"
                for peer in rule.get("from") or []
            )
            if from_agents:
                admitted |= {(x.get("protocol", "TCP"), x.get("port")) for x in rule.get("ports") or []}
    for port in (ROUTED_TLS_PORT, ROUTED_HTTP_PORT):
        if ("TCP", port) not in reach:
            problems.append(f"agents' NetworkPolicy does not let them reach the gate on TCP {port}")
        if ("TCP", port) not in admitted:
            problems.append(f"the gate's NetworkPolicy does not admit the agents on TCP {port}")
    return problems


def check_k8s_pdb_and_namespace(stack):
    problems = []
    pdbs = [
        p for p in stack.k8s_kind("PodDisruptionBudget")
        if matches(p["spec"].get("selector") or {}, pod_labels(stack))
    ]
    if not pdbs:
        problems.append("no PodDisruptionBudget selects the gate's pods")
    for p in pdbs:
        if not isinstance(p["spec"].get("minAvailable"), int) or p["spec"]["minAvailable"] < 1:
            problems.append(f"PDB minAvailable {p['spec'].get('minAvailable')!r} is not >= 1")
    namespaces = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in stack.k8s_kind("Namespace")}
    ns = deployment(stack).get("metadata", {}).get("namespace")
    if namespaces.get(ns, {}).get("pod-security.kubernetes.io/enforce") != "restricted":
        problems.append(f"namespace {ns} does not enforce the restricted Pod Security Standard")
    return problems


def policies(stack, namespace):
    return [p for p in stack.k8s_kind("NetworkPolicy") if p["metadata"].get("namespace") == namespace]


def selects_gate(peer, stack):
    gate_ns = deployment(stack).get("metadata", {}).get("namespace")
    ns_sel = peer.get("namespaceSelector")
    pod_sel = peer.get("podSelector")
    return (
        ns_sel is not None
        and (ns_sel.get("matchLabels") or {}) == {"kubernetes.io/metadata.name": gate_ns}
        and not ns_sel.get("matchExpressions")
        and pod_sel is not None
        and (pod_sel.get("matchLabels") or {})
        and matches(pod_sel, pod_labels(stack))
        and "ipBlock" not in peer
    )


def check_k8s_agents_reach_only_gate(stack):
    problems = []
    agents = policies(stack, "agents")
    default_deny = [
        p for p in agents
        if p["spec"].get("podSelector") == {}
        and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes") or [])
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    if not default_deny:
        problems.append("agents: no default-deny policy (podSelector {}, Ingress and Egress, no rules)")
    allowed = {
        ("UDP", 53), ("TCP", 53), ("UDP", 5353), ("TCP", 5353), ("TCP", PROXY_PORT),
        ("TCP", ROUTED_TLS_PORT), ("TCP", ROUTED_HTTP_PORT),
    }
    egress_rules = 0
    for p in agents:
        for rule in p["spec"].get("ingress") or []:
            problems.append(f"agents/{p['metadata']['name']}: ingress rule {rule}")
        for rule in p["spec"].get("egress") or []:
            egress_rules += 1
            peers = rule.get("to")
            if not peers:
                problems.append(f"agents/{p['metadata']['name']}: egress rule to anywhere")
            for peer in peers or []:
                if not selects_gate(peer, stack):
                    problems.append(f"agents/{p['metadata']['name']}: egress to {peer}")
            ports = rule.get("ports")
            if not ports:
                problems.append(f"agents/{p['metadata']['name']}: egress on every port")
            for port in ports or []:
                if (port.get("protocol", "TCP"), port.get("port")) not in allowed or port.get("endPort"):
                    problems.append(f"agents/{p['metadata']['name']}: egress port {port}")
    if not egress_rules:
        problems.append("agents: no egress to the gate at all (DNS and proxy)")
    return problems


def check_k8s_gate_egress_public_only(stack):
    """The gate's egress: some ports (which ones: the generated policy, checked against the
    binary below), to addresses outside private space, or to one private address that the
    configuration names by IP; never to cluster peers, never on every port."""
    problems = []
    gate_ns = deployment(stack).get("metadata", {}).get("namespace")
    gate_policies = [
        p for p in policies(stack, gate_ns) if matches(p["spec"].get("podSelector") or {}, pod_labels(stack))
    ]
    egress_policies = [p for p in gate_policies if "Egress" in (p["spec"].get("policyTypes") or [])]
    if not egress_policies:
        problems.append("no policy restricts the gate's egress")
    rules = 0
    for p in gate_policies:
        for rule in p["spec"].get("egress") or []:
            rules += 1
            ports = rule.get("ports")
            if not ports:
                problems.append(f"{p['metadata']['name']}: gate egress on every port")
            for port in ports or []:
                if not isinstance(port.get("port"), int) or port.get("endPort"):
                    problems.append(f"{p['metadata']['name']}: gate egress port {port}: not one numbered port")
            peers = rule.get("to")
            if not peers:
                problems.append(f"{p['metadata']['name']}: gate egress to anywhere")
            for peer in peers or []:
                block = peer.get("ipBlock")
                if not block or set(peer) != {"ipBlock"}:
                    problems.append(f"{p['metadata']['name']}: gate egress to a cluster peer {peer}")
                    continue
                cidr = ipaddress.ip_network(block["cidr"])
                excepted = [ipaddress.ip_network(e) for e in block.get("except") or []]
                if cidr.num_addresses == 1:
                    continue  # one address the configuration names (an upstream, a private rule)
                if cidr.version == 4:
                    for private in PRIVATE_V4:
                        if private.subnet_of(cidr) and not any(private.subnet_of(e) for e in excepted):
                            problems.append(f"{p['metadata']['name']}: gate egress reaches {private}")
                    if cidr.is_private:
                        problems.append(f"{p['metadata']['name']}: gate egress to private {cidr}")
                elif not any(ipaddress.ip_network("fc00::/7").subnet_of(e) for e in excepted):
                    problems.append(f"{p['metadata']['name']}: gate egress reaches fc00::/7")
    if not rules:
        problems.append("the gate has no egress rule (no DoH, no lists)")
    return problems


def check_k8s_gate_ingress(stack):
    problems = []
    gate_ns = deployment(stack).get("metadata", {}).get("namespace")
    gate_policies = [
        p for p in policies(stack, gate_ns) if matches(p["spec"].get("podSelector") or {}, pod_labels(stack))
    ]
    if not any("Ingress" in (p["spec"].get("policyTypes") or []) for p in gate_policies):
        problems.append("no policy restricts ingress to the gate")
    by_source = {}
    for p in gate_policies:
        for rule in p["spec"].get("ingress") or []:
            peers = rule.get("from")
            ports = {(x.get("protocol", "TCP"), x.get("port")) for x in rule.get("ports") or []}
            if not peers or not ports:
                problems.append(f"{p['metadata']['name']}: ingress from anywhere or on every port")
                continue
            for peer in peers:
                ns = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                if not ns or "ipBlock" in peer:
                    problems.append(f"{p['metadata']['name']}: ingress from {peer}")
                    continue
                by_source.setdefault(ns, set()).update(ports)
    agents = by_source.get("agents", set())
    if ("TCP", ADMIN_PORT) in agents or ("TCP", "admin") in agents:
        problems.append("agents can reach the admin port")
    if not {("UDP", 5353), ("TCP", 5353), ("TCP", PROXY_PORT)} <= agents:
        problems.append(f"agents cannot reach DNS and the proxy: {sorted(agents, key=str)}")
    if by_source.get("monitoring") != {("TCP", ADMIN_PORT)}:
        problems.append(f"monitoring reaches {by_source.get('monitoring')}, not just the admin port")
    for ns in set(by_source) - {"agents", "monitoring"}:
        problems.append(f"namespace {ns} reaches the gate")
    return problems


# --------------------------------------------------------------------------------------
# The real binary


def generate_gate_policy(cm):
    """`portcullis k8s networkpolicy` of the ConfigMap's files, written out as the pod sees
    them: (ok, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    with tempfile.TemporaryDirectory() as tmp:
        config = write_configmap(cm, tmp)
        result = subprocess.run(
            [str(binary()), "k8s", "networkpolicy", "--config", str(config)],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )
    return result.returncode == 0, result.stdout, result.stderr


def check_k8s_gate_policy_generated(stack):
    """The gate's NetworkPolicy is exactly what the binary derives from the ConfigMap's
    portcullis.toml and allowlist.toml: a port an allow rule, an upstream, a list or a
    listener needs is open, and nothing else (needs the binary)."""
    cm = k8s_gate_config(stack)
    if not cm:
        return ["no ConfigMap with portcullis.toml"]
    if stack.gate_policy_text is None:
        return [f"no deploy/k8s/{GATE_POLICY_FILE}"]
    if GATE_POLICY_FILE not in stack.kustomization.get("resources", []):
        return [f"kustomization.yaml does not apply {GATE_POLICY_FILE}"]
    ok, generated, err = generate_gate_policy(cm)
    if not ok:
        return [f"portcullis k8s networkpolicy failed: {err.strip()}"]
    if generated == stack.gate_policy_text:
        return []
    import difflib
    diff = "".join(difflib.unified_diff(
        stack.gate_policy_text.splitlines(True), generated.splitlines(True),
        f"deploy/k8s/{GATE_POLICY_FILE}", "generated from deploy/k8s/configmap.yaml",
    ))
    return [
        f"deploy/k8s/{GATE_POLICY_FILE} is not what the ConfigMap needs; regenerate it:\n"
        f"  portcullis k8s networkpolicy --configmap deploy/k8s/configmap.yaml > deploy/k8s/{GATE_POLICY_FILE}\n{diff}"
    ]


def config_check(config_path, extra_env=None):
    """(ok, output) of `portcullis config check FILE` (no PORTCULLIS_* from this process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update(extra_env or {})
    result = subprocess.run(
        [str(binary()), "config", "check", str(config_path)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def write_configmap(cm, directory):
    for key, value in (cm.get("data") or {}).items():
        (Path(directory) / key).write_text(value, encoding="utf-8")
    return Path(directory) / "portcullis.toml"


def config_check_env(config_path, token_dir):
    """PORTCULLIS_ADMIN_TOKEN_FILE for `config check` of a config whose `[admin] token_file`
    (a secret's path in the container) does not exist here: a temporary token file instead.
    The stacks set no PORTCULLIS_* variable (checked above), so that is all."""
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    if not (config.get("admin") or {}).get("token_file"):
        return {}
    token = Path(token_dir) / "admin-token"
    token.write_text("0123456789abcdef0123456789abcdef\n", encoding="utf-8")
    return {"PORTCULLIS_ADMIN_TOKEN_FILE": str(token)}


# --------------------------------------------------------------------------------------
# Tests

CHECKS = [
    check_compose_services_present,
    check_agent_tier_internal,
    check_only_gate_on_egress,
    check_agent_tier_dns_is_gate,
    check_agent_tier_proxy_env,
    check_compose_routed_agent,
    check_published_ports,
    check_services_hardened,
    check_gate_sysctl_and_healthcheck,
    check_admin_off_agent_tier,
    check_compose_file_is_the_truth,
    check_compose_config_directory,
    check_compose_admin_token,
    check_gate_stop_grace,
    check_groups_match_addresses,
    check_private_rules,
    check_image_env,
    check_k8s_files_listed,
    check_k8s_restricted,
    check_k8s_probes_and_spread,
    check_k8s_configmap_directory,
    check_k8s_file_is_the_truth,
    check_k8s_admin_token,
    check_k8s_termination_grace,
    check_k8s_ports,
    check_k8s_routed,
    check_k8s_pdb_and_namespace,
    check_k8s_agents_reach_only_gate,
    check_k8s_gate_egress_public_only,
    check_k8s_gate_ingress,
]


class StackTests(unittest.TestCase):
    """Every property holds on the files as they are."""

    @classmethod
    def setUpClass(cls):
        cls.stack = Stack()


def _property_test(check):
    def test(self):
        problems = check(self.stack)
        self.assertEqual([], problems, "\n".join(problems))

    test.__doc__ = check.__doc__
    return test


for _check in CHECKS:
    setattr(StackTests, "test_" + _check.__name__[len("check_"):], _property_test(_check))


class SupportTests(unittest.TestCase):
    """The parsing the checks rely on."""

    def test_build_stage_env_is_not_the_image(self):
        text = "FROM a AS build\nENV PORTCULLIS_DNS_LISTEN=0.0.0.0:53\nFROM b\nENV PORTCULLIS_CONFIG=/x\n"
        self.assertEqual({"PORTCULLIS_CONFIG": "/x"}, dockerfile_env(text))

    def test_env_forms(self):
        text = 'FROM b\nENV A=1 \\\n    PORTCULLIS_LOG_FORMAT="json"\nENV PORTCULLIS_DNS_LISTEN 0.0.0.0:53\n'
        self.assertEqual(
            {"A": "1", "PORTCULLIS_LOG_FORMAT": "json", "PORTCULLIS_DNS_LISTEN": "0.0.0.0:53"},
            dockerfile_env(text),
        )

    def test_durations(self):
        self.assertEqual(30, parse_duration("30s"))
        self.assertEqual(90, parse_duration("1m30s"))
        self.assertEqual(0.5, parse_duration("500ms"))
        self.assertIsNone(parse_duration("30"))
        self.assertIsNone(parse_duration("30 s"))

    def test_admin_token_file_is_ignored_by_git(self):
        """git itself agrees: deploy/compose/secrets/admin-token is ignored, .gitignore is not."""
        git = shutil.which("git")
        if not git or DEPLOY.resolve() != (REPO / "deploy").resolve():
            self.skipTest("git not installed, or DEPLOY_DIR is not the repository's")
        if subprocess.run([git, "-C", str(REPO), "rev-parse"], capture_output=True, check=False).returncode:
            self.skipTest("not a git work tree")
        secrets = COMPOSE_DIR / "secrets"

        def ignored(name):
            return subprocess.run(
                [git, "-C", str(REPO), "check-ignore", "-q", "--no-index", str(secrets / name)],
                capture_output=True, check=False,
            ).returncode == 0

        self.assertTrue(ignored("admin-token"), "secrets/admin-token is not git-ignored")
        self.assertFalse(ignored(".gitignore"), "secrets/.gitignore is itself ignored")


class ConfigCheckTests(unittest.TestCase):
    """The configurations the stack ships are accepted by the real binary."""

    def setUp(self):
        if binary() is None:
            where = os.environ.get("PORTCULLIS_BIN", "target/debug/portcullis")
            self.skipTest(f"no portcullis binary at {where} (cargo build, or set PORTCULLIS_BIN)")

    def test_compose_config_is_accepted(self):
        """The mounted directory as it is; a temporary token file stands in for the secret."""
        config = COMPOSE_CONFIG_DIR / "portcullis.toml"
        with tempfile.TemporaryDirectory() as tmp:
            ok, out = config_check(config, config_check_env(config, tmp))
        self.assertTrue(ok, out)

    def test_compose_config_needs_its_token(self):
        """Without the secret the gate refuses the configuration: the secret wiring matters."""
        token_file = Stack().gate_config.get("admin", {}).get("token_file")
        if not token_file or Path(token_file).exists():
            self.skipTest(f"token_file {token_file!r} is unset or exists on this machine")
        ok, out = config_check(COMPOSE_CONFIG_DIR / "portcullis.toml")
        self.assertFalse(ok, out)
        self.assertIn(token_file, out)

    def test_k8s_configmap_config_is_accepted(self):
        """The ConfigMap's files in a directory, as the pod sees them."""
        cm = k8s_gate_config(Stack())
        self.assertIsNotNone(cm, "no ConfigMap with portcullis.toml")
        with tempfile.TemporaryDirectory() as tmp:
            config = write_configmap(cm, tmp)
            ok, out = config_check(config, config_check_env(config, tmp))
        self.assertTrue(ok, out)

    def test_a_broken_config_is_refused(self):
        """The check can fail: the ConfigMap's config with an allow rule for an unknown group."""
        cm = copy.deepcopy(k8s_gate_config(Stack()))
        cm["data"]["allowlist.toml"] += '\n[[allow]]\nhost = "x.example"\ngroups = ["nobody"]\n'
        with tempfile.TemporaryDirectory() as tmp:
            config = write_configmap(cm, tmp)
            ok, out = config_check(config, config_check_env(config, tmp))
        self.assertFalse(ok, out)
        self.assertIn("nobody", out)


class GeneratedPolicyTests(unittest.TestCase):
    """The gate's NetworkPolicy is the binary's derivation of the shipped ConfigMap, and a
    configuration that needs another port fails the check until it is regenerated."""

    def setUp(self):
        if binary() is None:
            where = os.environ.get("PORTCULLIS_BIN", "target/debug/portcullis")
            self.skipTest(f"no portcullis binary at {where} (cargo build, or set PORTCULLIS_BIN)")
        self.stack = Stack()

    def test_shipped_policy_is_generated(self):
        problems = check_k8s_gate_policy_generated(self.stack)
        self.assertEqual([], problems, "\n".join(problems))

    def test_the_regeneration_command_gives_the_same_file(self):
        """The command the file's header and README give, reading the ConfigMap itself."""
        result = subprocess.run(
            [str(binary()), "k8s", "networkpolicy", "--configmap", str(K8S_DIR / "configmap.yaml")],
            capture_output=True, text=True, timeout=120, check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")},
        )
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual(self.stack.gate_policy_text, result.stdout)

    def test_mutations_are_caught(self):
        for what, mutate in GENERATED_POLICY_MUTATIONS:
            with self.subTest(broken=what):
                broken = copy.deepcopy(self.stack)
                mutate(broken)
                self.assertNotEqual([], check_k8s_gate_policy_generated(broken), f"missed: {what}")

    def test_unused_settings_open_nothing(self):
        """public_connect_ports of a configuration with no group in public or report mode,
        and allow rules' groups, change nothing: the policy follows what is dialled."""
        changed = copy.deepcopy(self.stack)
        _cm_replace("public_connect_ports = [443]", "public_connect_ports = [443, 8443]")(changed)
        self.assertEqual([], check_k8s_gate_policy_generated(changed))

    def test_policy_flag_names_the_rule_that_needs_a_port(self):
        """`--policy` against the shipped policy: quiet on the shipped ConfigMap; on one with
        an 8443 rule, exit 1 naming the port and the rule's file and line."""
        def run(stack):
            env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
            with tempfile.TemporaryDirectory() as tmp:
                config = write_configmap(k8s_gate_config(stack), tmp)
                return subprocess.run(
                    [str(binary()), "k8s", "networkpolicy", "--config", str(config),
                     "--policy", str(K8S_DIR / GATE_POLICY_FILE)],
                    capture_output=True, text=True, timeout=120, env=env, check=False,
                )
        shipped = run(self.stack)
        self.assertEqual(0, shipped.returncode, shipped.stdout + shipped.stderr)
        broken = copy.deepcopy(self.stack)
        _cm_allow(ALT_PORT_RULE)(broken)
        result = run(broken)
        self.assertEqual(1, result.returncode, result.stdout + result.stderr)
        self.assertIn("TCP 8443", result.stderr)
        self.assertRegex(result.stderr, r"allowlist\.toml:\d+: allow rule `alt-port\.example` \(ports \[8443\]\)")


def _svc(name):
    return lambda s: s.compose["services"][name]


def _set(getter, key, value):
    def mutate(stack):
        getter(stack)[key] = value
    return mutate


def _delete(getter, key):
    def mutate(stack):
        getter(stack).pop(key, None)
    return mutate


def _k8s(kind, name=None):
    def get(stack):
        for _, d in stack.k8s:
            if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name):
                return d
        raise KeyError(kind)
    return get


def _pod(stack):
    return pod_spec(stack)


def _container(stack):
    return gate_container(stack)


def _env(stack, name, value):
    env = _container(stack).setdefault("env", [])
    for e in env:
        if e["name"] == name:
            e["value"] = value
            return
    env.append({"name": name, "value": value})


def _gate_env(stack, name, value):
    _svc(GATE)(stack).setdefault("environment", {})[name] = value


def _gate_file(section, key, value):
    def mutate(stack):
        stack.gate_config.setdefault(section, {})[key] = value
    return mutate


def _dockerfile_append(line):
    def mutate(stack):
        stack.dockerfile = (stack.dockerfile or "FROM scratch\n") + line + "\n"
    return mutate


def _dockerfile_replace(old, new):
    def mutate(stack):
        assert old in stack.dockerfile, old
        stack.dockerfile = stack.dockerfile.replace(old, new)
    return mutate


def _cm_replace(old, new):
    def mutate(stack):
        data = _k8s("ConfigMap")(stack)["data"]
        assert old in data["portcullis.toml"], old
        data["portcullis.toml"] = data["portcullis.toml"].replace(old, new)
    return mutate


def _cm_allow(text):
    """Appends allow rules to a copy of the ConfigMap's allowlist.toml."""
    def mutate(stack):
        _k8s("ConfigMap")(stack)["data"]["allowlist.toml"] += text
    return mutate


ALT_PORT_RULE = '\n[[allow]]\nhost = "alt-port.example"\nports = [8443]\n'


def _gate_policy_text_replace(old, new):
    def mutate(stack):
        assert old in stack.gate_policy_text, old
        stack.gate_policy_text = stack.gate_policy_text.replace(old, new, 1)
    return mutate


def _gate_volumes(volumes):
    return _set(_svc(GATE), "volumes", volumes)


def _agents_egress_rule(stack):
    for p in policies(stack, "agents"):
        if p["spec"].get("egress"):
            return p["spec"]["egress"][0]
    raise KeyError("agents egress")


def _gate_policy(stack):
    return _k8s("NetworkPolicy", GATE)(stack)["spec"]


def _k8s_token_secret(optional):
    """The admin token wired as kustomization.yaml describes (optionally: wrongly)."""
    def mutate(stack):
        _cm_replace('listen = ["0.0.0.0:9953"]', 'listen = ["0.0.0.0:9953"]\n    token_file = "/run/secrets/portcullis/admin-token"')(stack)
        _pod(stack)["volumes"].append({"name": "admin-token", "secret": {"secretName": "portcullis-admin-token", "optional": optional}})
        _container(stack)["volumeMounts"].append({"name": "admin-token", "mountPath": "/run/secrets/portcullis", "readOnly": True})
    return mutate


CACHE_VOLUME = "portcullis-cache:/var/cache/portcullis"

# (check, what is broken, mutation of a parsed copy)
MUTATIONS = [
    (check_compose_services_present, "no litellm service", lambda s: s.compose["services"].pop("litellm")),
    (check_agent_tier_internal, "agent tier not internal", lambda s: s.compose["networks"]["agent-tier"].pop("internal")),
    (check_only_gate_on_egress, "agent joins egress", lambda s: _svc("agent")(s).__setitem__("networks", ["agent-tier", "egress"])),
    (check_only_gate_on_egress, "litellm network_mode host", _set(_svc("litellm"), "network_mode", "host")),
    (check_only_gate_on_egress, "prometheus on the default network", _delete(_svc("prometheus"), "networks")),
    (check_agent_tier_dns_is_gate, "agent dns 1.1.1.1", _set(_svc("agent"), "dns", ["1.1.1.1"])),
    (check_agent_tier_dns_is_gate, "litellm without dns", _delete(_svc("litellm"), "dns")),
    (check_agent_tier_dns_is_gate, "DNS listens on loopback only (file)", _gate_file("dns", "listen", ["127.0.0.1:53"])),
    (check_agent_tier_dns_is_gate, "DNS moved by a variable", lambda s: _gate_env(s, "PORTCULLIS_DNS_LISTEN", "172.30.0.53:5353")),
    (check_agent_tier_proxy_env, "agent out of routed mode, no proxy variables", lambda s: s.gate_config["dns"]["modes"].__setitem__("agent", "allowlist")),
    (check_agent_tier_proxy_env, "litellm without HTTPS_PROXY", lambda s: _svc("litellm")(s)["environment"].pop("HTTPS_PROXY")),
    (check_agent_tier_proxy_env, "litellm HTTP_PROXY elsewhere", lambda s: _svc("litellm")(s)["environment"].__setitem__("HTTP_PROXY", "http://evil.example:3128")),
    (check_agent_tier_proxy_env, "NO_PROXY=*", lambda s: _svc("litellm")(s)["environment"].__setitem__("NO_PROXY", "*")),
    (check_agent_tier_proxy_env, "no NO_PROXY", lambda s: _svc("litellm")(s)["environment"].pop("NO_PROXY")),
    (check_agent_tier_proxy_env, "proxy on another port (file)", _gate_file("proxy", "listen", ["172.30.0.53:8080"])),
    (check_compose_routed_agent, "agent in allowlist mode", lambda s: s.gate_config["dns"]["modes"].__setitem__("agent", "allowlist")),
    (check_compose_routed_agent, "agent gets HTTPS_PROXY", lambda s: _svc("agent")(s)["environment"].__setitem__("HTTPS_PROXY", "http://portcullis:3128")),
    (check_compose_routed_agent, "agent gets a lower-case all_proxy", lambda s: _svc("agent")(s)["environment"].__setitem__("all_proxy", "http://portcullis:3128")),
    (check_compose_routed_agent, "no routed TLS listener", lambda s: s.gate_config["routed"].pop("tls_listen")),
    (check_compose_routed_agent, "routed TLS on 8443 only", _gate_file("routed", "tls_listen", ["172.30.0.53:8443"])),
    (check_compose_routed_agent, "routed TLS on every address", _gate_file("routed", "tls_listen", ["0.0.0.0:443"])),
    (check_compose_routed_agent, "routed HTTP on the ops network too", _gate_file("routed", "http_listen", ["172.30.0.53:80", "172.30.2.53:80"])),
    (check_compose_routed_agent, "routed answers carry the egress address", lambda s: s.gate_config["dns"]["routed_addresses"].__setitem__("agent", ["172.30.1.53"])),
    (check_compose_routed_agent, "no routed_addresses, DNS on every address", lambda s: [s.gate_config["dns"].pop("routed_addresses"), s.gate_config["dns"].__setitem__("listen", ["0.0.0.0:53"])]),
    (check_compose_routed_agent, "port floor 1024", lambda s: _svc(GATE)(s)["sysctls"].__setitem__("net.ipv4.ip_unprivileged_port_start", 1024)),
    (check_published_ports, "agent publishes 8080", _set(_svc("agent"), "ports", ["8080:8080"])),
    (check_published_ports, "admin on all interfaces", _set(_svc(GATE), "ports", ["9953:9953"])),
    (check_published_ports, "DNS published on loopback", _set(_svc(GATE), "ports", ["127.0.0.1:53:53/udp"])),
    (check_services_hardened, "litellm read_only false", _set(_svc("litellm"), "read_only", False)),
    (check_services_hardened, "agent keeps capabilities", _delete(_svc("agent"), "cap_drop")),
    (check_services_hardened, "gate cap_add NET_ADMIN", _set(_svc(GATE), "cap_add", ["NET_ADMIN"])),
    (check_services_hardened, "prometheus without no-new-privileges", _delete(_svc("prometheus"), "security_opt")),
    (check_services_hardened, "agent without memory limit", _delete(_svc("agent"), "mem_limit")),
    (check_services_hardened, "gate without CPU limit", _delete(_svc(GATE), "cpus")),
    (check_services_hardened, "litellm without PID limit", _delete(_svc("litellm"), "pids_limit")),
    (check_services_hardened, "agent tmpfs without noexec", _set(_svc("agent"), "tmpfs", ["/tmp:rw,nosuid,nodev"])),
    (check_gate_sysctl_and_healthcheck, "no sysctl", _delete(_svc(GATE), "sysctls")),
    (check_gate_sysctl_and_healthcheck, "ip_forward unset", lambda s: _svc(GATE)(s)["sysctls"].pop("net.ipv4.ip_forward")),
    (check_gate_sysctl_and_healthcheck, "ip_forward on", lambda s: _svc(GATE)(s)["sysctls"].__setitem__("net.ipv4.ip_forward", 1)),
    (check_gate_sysctl_and_healthcheck, "healthcheck via curl", lambda s: _svc(GATE)(s)["healthcheck"].__setitem__("test", ["CMD", "curl", "-f", "http://127.0.0.1:9953/readyz"])),
    (check_gate_sysctl_and_healthcheck, "no cache volume", _gate_volumes(["./portcullis:/etc/portcullis:ro"])),
    (check_gate_sysctl_and_healthcheck, "cache_dir on the read-only root", lambda s: s.gate_config["sources"].__setitem__("cache_dir", "/tmp/lists")),
    (check_admin_off_agent_tier, "admin on the agent tier (file)", _gate_file("admin", "listen", ["127.0.0.1:9953", "172.30.0.53:9953", "172.30.1.53:9953"])),
    (check_admin_off_agent_tier, "admin not on the egress address (file)", _gate_file("admin", "listen", ["127.0.0.1:9953", "172.30.2.53:9953"])),
    (check_admin_off_agent_tier, "admin on 0.0.0.0 (file)", _gate_file("admin", "listen", ["0.0.0.0:9953"])),
    (check_admin_off_agent_tier, "admin on 0.0.0.0 (a variable over the file)", lambda s: _gate_env(s, "PORTCULLIS_ADMIN_LISTEN", "0.0.0.0:9953")),
    (check_compose_file_is_the_truth, "DNS listener restated", lambda s: _gate_env(s, "PORTCULLIS_DNS_LISTEN", "172.30.0.53:53")),
    (check_compose_file_is_the_truth, "proxy listener (list syntax)", lambda s: _svc(GATE)(s).__setitem__("environment", ["PORTCULLIS_PROXY_LISTEN=172.30.0.53:3128"])),
    (check_compose_file_is_the_truth, "admin listener", lambda s: _gate_env(s, "PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:9953")),
    (check_compose_file_is_the_truth, "allowlist", lambda s: _gate_env(s, "PORTCULLIS_ALLOWLIST", "/etc/portcullis/allowlist.toml")),
    (check_compose_file_is_the_truth, "cache dir", lambda s: _gate_env(s, "PORTCULLIS_CACHE_DIR", "/var/cache/portcullis/lists")),
    (check_compose_file_is_the_truth, "token file by variable", lambda s: _gate_env(s, "PORTCULLIS_ADMIN_TOKEN_FILE", "/run/secrets/admin-token")),
    (check_compose_file_is_the_truth, "env_file", _set(_svc(GATE), "env_file", [".env"])),
    (check_compose_file_is_the_truth, "the image bakes a listener", _dockerfile_append("ENV PORTCULLIS_DNS_LISTEN=0.0.0.0:53")),
    (check_compose_config_directory, "single-file mounts", _gate_volumes(["./portcullis/portcullis.toml:/etc/portcullis/portcullis.toml:ro", "./portcullis/allowlist.toml:/etc/portcullis/allowlist.toml:ro", CACHE_VOLUME])),
    (check_compose_config_directory, "directory plus a file over it", lambda s: _svc(GATE)(s)["volumes"].append("./allowlist.toml:/etc/portcullis/allowlist.toml:ro")),
    (check_compose_config_directory, "directory writable", _gate_volumes(["./portcullis:/etc/portcullis", CACHE_VOLUME])),
    (check_compose_config_directory, "directory rw (long syntax)", _gate_volumes([{"type": "bind", "source": "./portcullis", "target": "/etc/portcullis"}, CACHE_VOLUME])),
    (check_compose_config_directory, "another directory", _gate_volumes(["./elsewhere:/etc/portcullis:ro", CACHE_VOLUME])),
    (check_compose_config_directory, "no config mount", _gate_volumes([CACHE_VOLUME])),
    (check_compose_config_directory, "config read from outside the mount", lambda s: _gate_env(s, "PORTCULLIS_CONFIG", "/srv/portcullis.toml")),
    (check_compose_config_directory, "--config outside the mount", _set(_svc(GATE), "command", ["--config", "/srv/portcullis.toml", "run"])),
    (check_compose_config_directory, "a config name not in the directory", _set(_svc(GATE), "command", ["--config", "/etc/portcullis/gate.toml", "run"])),
    (check_compose_config_directory, "allowlist outside the mount", lambda s: s.gate_config.__setitem__("allowlist", "/srv/allowlist.toml")),
    (check_compose_config_directory, "allowlist above the mount", lambda s: s.gate_config.__setitem__("allowlist", "../allowlist.toml")),
    (check_compose_config_directory, "a local list the directory lacks", lambda s: s.gate_config["lists"].append({"name": "x", "path": "blocklists/local.txt"})),
    (check_compose_admin_token, "no token_file", lambda s: s.gate_config["admin"].pop("token_file")),
    (check_compose_admin_token, "token_file not a secret", _gate_file("admin", "token_file", "admin-token")),
    (check_compose_admin_token, "secret not given to the gate", _delete(_svc(GATE), "secrets")),
    (check_compose_admin_token, "secret mounted elsewhere", _set(_svc(GATE), "secrets", [{"source": "admin-token", "target": "token"}])),
    (check_compose_admin_token, "secret not defined", lambda s: s.compose.pop("secrets")),
    (check_compose_admin_token, "secret from the environment", lambda s: s.compose["secrets"].__setitem__("admin-token", {"environment": "ADMIN_TOKEN"})),
    (check_compose_admin_token, "secret file in the config directory", lambda s: s.compose["secrets"]["admin-token"].__setitem__("file", "./portcullis/admin-token")),
    (check_compose_admin_token, "no secrets/.gitignore", lambda s: setattr(s, "secrets_gitignore", None)),
    (check_compose_admin_token, "secrets/.gitignore ignores only an old name", lambda s: setattr(s, "secrets_gitignore", "token.txt\n")),
    (check_compose_admin_token, "agent gets the admin token", _set(_svc("agent"), "secrets", ["admin-token"])),
    (check_gate_stop_grace, "Compose's default grace", _delete(_svc(GATE), "stop_grace_period")),
    (check_gate_stop_grace, "grace equal to the drain", _set(_svc(GATE), "stop_grace_period", "20s")),
    (check_gate_stop_grace, "drain longer than the grace", _gate_file("proxy", "drain_secs", 60)),
    (check_gate_stop_grace, "grace not a duration", _set(_svc(GATE), "stop_grace_period", "30")),
    (check_groups_match_addresses, "litellm group elsewhere", lambda s: s.gate_config["groups"].__setitem__("litellm", ["172.30.0.11/32"])),
    (check_groups_match_addresses, "agent group too narrow", lambda s: s.gate_config["groups"].__setitem__("agent", ["172.30.0.128/25"])),
    (check_private_rules, "private rule for every group", lambda s: s.allowlist["allow"][1].pop("groups")),
    (check_private_rules, "no Ollama rule", lambda s: s.allowlist.__setitem__("allow", [r for r in s.allowlist["allow"] if r["host"] != "host.docker.internal"])),
    (check_image_env, "a listener baked in", _dockerfile_append("ENV PORTCULLIS_DNS_LISTEN=0.0.0.0:53")),
    (check_image_env, "a listener beside the config", _dockerfile_replace("ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml", "ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml \\\n    PORTCULLIS_ADMIN_LISTEN=0.0.0.0:9953")),
    (check_image_env, "cache dir (legacy ENV syntax)", _dockerfile_append("ENV PORTCULLIS_CACHE_DIR /var/cache/portcullis/lists")),
    (check_image_env, "log format", _dockerfile_append("ENV PORTCULLIS_LOG_FORMAT=json")),
    (check_image_env, "RUST_LOG over [log] level", _dockerfile_append("ENV RUST_LOG=debug")),
    (check_image_env, "config elsewhere", _dockerfile_replace("ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml", "ENV PORTCULLIS_CONFIG=/usr/share/portcullis/portcullis.toml")),
    (check_image_env, "no config variable", _dockerfile_replace("ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml", "")),
    (check_image_env, "no Dockerfile", lambda s: setattr(s, "dockerfile", None)),
    (check_k8s_files_listed, "a manifest not listed", lambda s: s.kustomization["resources"].remove("pdb.yaml")),
    (check_k8s_restricted, "one replica", lambda s: _k8s("Deployment", GATE)(s)["spec"].__setitem__("replicas", 1)),
    (check_k8s_restricted, "pod may run as root", lambda s: _pod(s)["securityContext"].pop("runAsNonRoot")),
    (check_k8s_restricted, "no seccomp", lambda s: _pod(s)["securityContext"].pop("seccompProfile")),
    (check_k8s_restricted, "writable root", lambda s: _container(s)["securityContext"].__setitem__("readOnlyRootFilesystem", False)),
    (check_k8s_restricted, "privilege escalation", lambda s: _container(s)["securityContext"].pop("allowPrivilegeEscalation")),
    (check_k8s_restricted, "capabilities kept", lambda s: _container(s)["securityContext"]["capabilities"].__setitem__("drop", ["NET_RAW"])),
    (check_k8s_probes_and_spread, "readiness on /healthz", lambda s: _container(s)["readinessProbe"]["httpGet"].__setitem__("path", "/healthz")),
    (check_k8s_probes_and_spread, "liveness on the proxy port", lambda s: _container(s)["livenessProbe"]["httpGet"].__setitem__("port", "proxy")),
    (check_k8s_probes_and_spread, "no spread", lambda s: [_pod(s).pop("topologySpreadConstraints"), _pod(s).pop("affinity")]),
    (check_k8s_configmap_directory, "subPath mount", lambda s: _container(s)["volumeMounts"][0].__setitem__("subPath", "portcullis.toml")),
    (check_k8s_configmap_directory, "ConfigMap mounted elsewhere", lambda s: _container(s)["volumeMounts"][0].__setitem__("mountPath", "/config")),
    (check_k8s_configmap_directory, "config outside the mount", lambda s: _env(s, "PORTCULLIS_CONFIG", "/usr/share/portcullis/portcullis.toml")),
    (check_k8s_configmap_directory, "--config outside the mount", lambda s: _container(s).__setitem__("args", ["--config", "/usr/share/portcullis/portcullis.toml", "run"])),
    (check_k8s_configmap_directory, "allowlist outside the mount", _cm_replace('allowlist = "allowlist.toml"', 'allowlist = "/srv/allowlist.toml"')),
    (check_k8s_configmap_directory, "allowlist not in the ConfigMap", _cm_replace('allowlist = "allowlist.toml"', 'allowlist = "rules.toml"')),
    (check_k8s_configmap_directory, "items narrow the directory", lambda s: next(v for v in _pod(s)["volumes"] if "configMap" in v)["configMap"].__setitem__("items", [{"key": "portcullis.toml", "path": "portcullis.toml"}])),
    (check_k8s_file_is_the_truth, "DNS listener restated", lambda s: _env(s, "PORTCULLIS_DNS_LISTEN", "0.0.0.0:5353")),
    (check_k8s_file_is_the_truth, "proxy listener", lambda s: _env(s, "PORTCULLIS_PROXY_LISTEN", "0.0.0.0:3128")),
    (check_k8s_file_is_the_truth, "admin listener", lambda s: _env(s, "PORTCULLIS_ADMIN_LISTEN", "0.0.0.0:9953")),
    (check_k8s_file_is_the_truth, "allowlist", lambda s: _env(s, "PORTCULLIS_ALLOWLIST", "/etc/portcullis/allowlist.toml")),
    (check_k8s_file_is_the_truth, "cache dir", lambda s: _env(s, "PORTCULLIS_CACHE_DIR", "/var/cache/portcullis/lists")),
    (check_k8s_file_is_the_truth, "from a Secret", lambda s: _container(s).setdefault("env", []).append({"name": "PORTCULLIS_UPSTREAMS", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}})),
    (check_k8s_file_is_the_truth, "envFrom a ConfigMap", lambda s: _container(s).__setitem__("envFrom", [{"configMapRef": {"name": "portcullis-env"}}])),
    (check_k8s_file_is_the_truth, "the image bakes a listener", _dockerfile_append("ENV PORTCULLIS_ADMIN_LISTEN=0.0.0.0:9953")),
    (check_k8s_file_is_the_truth, "no allowlist of its own", _cm_replace('allowlist = "allowlist.toml"\n', "")),
    (check_k8s_admin_token, "token_file without its Secret", _cm_replace('listen = ["0.0.0.0:9953"]', 'listen = ["0.0.0.0:9953"]\n    token_file = "/run/secrets/portcullis/admin-token"')),
    (check_k8s_admin_token, "token in the ConfigMap", _cm_replace('listen = ["0.0.0.0:9953"]', 'listen = ["0.0.0.0:9953"]\n    token_file = "local.txt"')),
    (check_k8s_admin_token, "token_file on an optional Secret", _k8s_token_secret(optional=True)),
    (check_k8s_admin_token, "token file by variable, no Secret", lambda s: _env(s, "PORTCULLIS_ADMIN_TOKEN_FILE", "/run/secrets/portcullis/admin-token")),
    (check_k8s_termination_grace, "grace 15 s", lambda s: _pod(s).__setitem__("terminationGracePeriodSeconds", 15)),
    (check_k8s_termination_grace, "no preStop", lambda s: _container(s).pop("lifecycle")),
    (check_k8s_termination_grace, "grace 30 s: preStop 10 + drain 20 leave no margin", lambda s: _pod(s).__setitem__("terminationGracePeriodSeconds", 30)),
    (check_k8s_termination_grace, "preStop longer than the grace allows", lambda s: _container(s)["lifecycle"]["preStop"]["sleep"].__setitem__("seconds", 20)),
    (check_k8s_termination_grace, "drain longer than the grace allows", _cm_replace("drain_secs = 20", "drain_secs = 30")),
    (check_k8s_termination_grace, "preStop of 1 s", lambda s: _container(s)["lifecycle"]["preStop"]["sleep"].__setitem__("seconds", 1)),
    (check_k8s_termination_grace, "preStop exec of a shell the image lacks", lambda s: _container(s)["lifecycle"].__setitem__("preStop", {"exec": {"command": ["sh", "-c", "sleep 10"]}})),
    (check_k8s_termination_grace, "drain longer than the default grace", lambda s: [_pod(s).pop("terminationGracePeriodSeconds"), _cm_replace("drain_secs = 20", "drain_secs = 30")(s)]),
    (check_k8s_ports, "DNS on 53 in the container (ConfigMap)", _cm_replace('listen = ["0.0.0.0:5353"]', 'listen = ["0.0.0.0:53"]')),
    (check_k8s_ports, "DNS on 53 by a variable", lambda s: _env(s, "PORTCULLIS_DNS_LISTEN", "0.0.0.0:53")),
    (check_k8s_ports, "the image bakes DNS on 53", _dockerfile_append("ENV PORTCULLIS_DNS_LISTEN=0.0.0.0:53")),
    (check_k8s_ports, "cache off the emptyDir", _cm_replace('cache_dir = "/var/cache/portcullis/lists"', 'cache_dir = "/tmp/lists"')),
    (check_k8s_ports, "admin Service as LoadBalancer", lambda s: _k8s("Service", "portcullis-admin")(s)["spec"].__setitem__("type", "LoadBalancer")),
    (check_k8s_ports, "DNS Service only UDP", lambda s: _k8s("Service", "portcullis-dns")(s)["spec"]["ports"].pop()),
    (check_k8s_routed, "agents in allowlist mode", _cm_replace('modes = { agent = "routed"', 'modes = { agent = "allowlist"')),
    (check_k8s_routed, "no routed_addresses", _cm_replace('routed_addresses = { agent = ["10.96.0.53"] }', "")),
    (check_k8s_routed, "routed_addresses not the Service's", _cm_replace('routed_addresses = { agent = ["10.96.0.53"] }', 'routed_addresses = { agent = ["10.96.0.54"] }')),
    (check_k8s_routed, "routed Service without a fixed clusterIP", lambda s: _k8s("Service", "portcullis-routed")(s)["spec"].pop("clusterIP")),
    (check_k8s_routed, "443 mapped to the proxy port", lambda s: _k8s("Service", "portcullis-routed")(s)["spec"]["ports"][0].__setitem__("targetPort", "proxy")),
    (check_k8s_routed, "no routed HTTP port", lambda s: _k8s("Service", "portcullis-routed")(s)["spec"]["ports"].pop()),
    (check_k8s_routed, "the gate listens on 8443", _cm_replace('tls_listen = ["0.0.0.0:443"]', 'tls_listen = ["0.0.0.0:8443"]')),
    (check_k8s_routed, "no pod sysctl for port 80", lambda s: _pod(s)["securityContext"].pop("sysctls")),
    (check_k8s_routed, "agents may not reach 443", lambda s: _agents_egress_rule(s).__setitem__("ports", [p for p in _agents_egress_rule(s)["ports"] if p["port"] != 443])),
    (check_k8s_routed, "the gate does not admit 80", lambda s: _gate_policy(s)["ingress"][0].__setitem__("ports", [p for p in _gate_policy(s)["ingress"][0]["ports"] if p["port"] != 80])),
    (check_k8s_agents_reach_only_gate, "agents to the gate on 8443", lambda s: _agents_egress_rule(s)["ports"].append({"protocol": "TCP", "port": 8443})),
    (check_k8s_pdb_and_namespace, "no PDB", lambda s: s.k8s.__setitem__(slice(None), [(f, d) for f, d in s.k8s if d["kind"] != "PodDisruptionBudget"])),
    (check_k8s_pdb_and_namespace, "namespace not restricted", lambda s: _k8s("Namespace", GATE)(s)["metadata"]["labels"].__setitem__("pod-security.kubernetes.io/enforce", "baseline")),
    (check_k8s_agents_reach_only_gate, "agents to kube-dns", lambda s: _agents_egress_rule(s)["to"].append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}})),
    (check_k8s_agents_reach_only_gate, "agents to the internet", lambda s: _agents_egress_rule(s)["to"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})),
    (check_k8s_agents_reach_only_gate, "agents on every port", lambda s: _agents_egress_rule(s).pop("ports")),
    (check_k8s_agents_reach_only_gate, "agents to the admin port", lambda s: _agents_egress_rule(s)["ports"].append({"protocol": "TCP", "port": 9953})),
    (check_k8s_agents_reach_only_gate, "no default deny", lambda s: s.k8s.__setitem__(slice(None), [(f, d) for f, d in s.k8s if not (d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == "agents" and d["metadata"]["name"] == "default-deny")])),
    (check_k8s_gate_egress_public_only, "gate egress on every port", lambda s: _gate_policy(s)["egress"][0].pop("ports")),
    (check_k8s_gate_egress_public_only, "gate egress on a port range", lambda s: _gate_policy(s)["egress"][0]["ports"][0].__setitem__("endPort", 65535)),
    (check_k8s_gate_egress_public_only, "gate egress to the node network", lambda s: _gate_policy(s)["egress"][0]["to"][0]["ipBlock"]["except"].remove("10.0.0.0/8")),
    (check_k8s_gate_egress_public_only, "gate egress to a private range", lambda s: _gate_policy(s)["egress"].append({"to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}], "ports": [{"protocol": "UDP", "port": 53}]})),
    (check_k8s_gate_egress_public_only, "gate egress to kube-system", lambda s: _gate_policy(s)["egress"][0]["to"].append({"namespaceSelector": {}})),
    (check_k8s_gate_egress_public_only, "gate egress not restricted", lambda s: _gate_policy(s).__setitem__("policyTypes", ["Ingress"]) or _gate_policy(s).pop("egress")),
    (check_k8s_gate_ingress, "agents reach admin", lambda s: _gate_policy(s)["ingress"][0]["ports"].append({"protocol": "TCP", "port": 9953})),
    (check_k8s_gate_ingress, "ingress from anywhere", lambda s: _gate_policy(s)["ingress"].append({})),
]

# What check_k8s_gate_policy_generated (GeneratedPolicyTests, with the binary) must notice.
GENERATED_POLICY_MUTATIONS = [
    ("an allow rule on port 8443", _cm_allow(ALT_PORT_RULE)),
    ("an allow rule on port 80, for one group", _cm_allow('\n[[allow]]\nhost = "plain.example"\nports = [80, 8080]\ngroups = ["agent"]\n')),
    ("a udp:// upstream", _cm_replace('[[upstream.servers]]\nurl = "https://9.9.9.9/dns-query"', '[[upstream.servers]]\nurl = "udp://9.9.9.9:53"\n\n[[upstream.servers]]\nurl = "https://9.9.9.9/dns-query"')),
    ("a tls:// upstream on 8853", _cm_replace('url = "https://149.112.112.112/dns-query"', 'url = "tls://149.112.112.112:8853"')),
    ("a routed TLS port", _cm_replace('tls_listen = ["0.0.0.0:443"]', 'tls_listen = ["0.0.0.0:443"]\ntls_ports = [8443]')),
    ("report mode opens the public ports", lambda s: [_cm_replace('mode = "allowlist"\n# Used only', 'mode = "report"\n# Used only')(s), _cm_replace("public_connect_ports = [443]", "public_connect_ports = [443, 8443]")(s)]),
    ("the policy edited by hand: port 80 shut", _gate_policy_text_replace("        - protocol: TCP\n          port: 80\n  ", "  ")),
    ("the policy edited by hand: an extra port", _gate_policy_text_replace("          port: 443\n", "          port: 443\n        - protocol: TCP\n          port: 22\n")),
    ("the policy not applied", lambda s: s.kustomization["resources"].remove(GATE_POLICY_FILE)),
]

# Changes the checks must NOT flag: the documented ways to do things right.
ACCEPTED = [
    (check_k8s_admin_token, "the token wired as kustomization.yaml says", _k8s_token_secret(optional=False)),
    (check_compose_admin_token, "long secret syntax at the same path", _set(_svc(GATE), "secrets", [{"source": "admin-token", "target": "/run/secrets/admin-token"}])),
    (check_compose_config_directory, "long volume syntax, read-only", _gate_volumes([{"type": "bind", "source": "./portcullis", "target": "/etc/portcullis", "read_only": True}, CACHE_VOLUME])),
    (check_image_env, "ENV in the build stage only", lambda s: setattr(s, "dockerfile", s.dockerfile.replace("WORKDIR /src\n", "WORKDIR /src\nENV PORTCULLIS_DNS_LISTEN=0.0.0.0:53\n", 1))),
    (check_gate_stop_grace, "grace in minutes", _set(_svc(GATE), "stop_grace_period", "1m")),
    (check_k8s_termination_grace, "preStop before Kubernetes 1.30: exec portcullis sleep", lambda s: _container(s)["lifecycle"].__setitem__("preStop", {"exec": {"command": ["/usr/local/bin/portcullis", "sleep", "10"]}})),
    (check_k8s_gate_egress_public_only, "one private upstream address of the configuration's", lambda s: _gate_policy(s)["egress"].append({"to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}], "ports": [{"protocol": "UDP", "port": 53}]})),
]


class ChecksCanFail(unittest.TestCase):
    """Each check notices its property broken (in a copy; the files are not touched), and
    accepts the documented right ways."""

    @classmethod
    def setUpClass(cls):
        cls.stack = Stack()

    def test_every_check_has_a_mutation(self):
        self.assertEqual(set(CHECKS), {m[0] for m in MUTATIONS})

    def test_mutations_are_caught(self):
        for check, what, mutate in MUTATIONS:
            with self.subTest(check=check.__name__, broken=what):
                broken = copy.deepcopy(self.stack)
                mutate(broken)
                self.assertNotEqual([], check(broken), f"{check.__name__} missed: {what}")

    def test_right_ways_are_accepted(self):
        for check, what, mutate in ACCEPTED:
            with self.subTest(check=check.__name__, change=what):
                changed = copy.deepcopy(self.stack)
                mutate(changed)
                self.assertEqual([], check(changed), f"{check.__name__} refused: {what}")


def main():
    result = unittest.main(module=__name__, exit=False, verbosity=2, argv=[sys.argv[0]] + sys.argv[1:]).result
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    # In CI every test must run: a skip there is a failure, not a quiet pass.
    ci = os.environ.get("CI", "").lower() == "true"
    for test, reason in result.skipped:
        print(f"{'FAIL (skipped under CI=true)' if ci else 'skipped'}: {test.id()}: {reason}")
    if ci:
        failed, skipped = failed + skipped, 0
    print(f"stack tests: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
