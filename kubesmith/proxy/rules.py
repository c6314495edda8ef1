"""The iptables rules of kube-proxy's iptables mode, computed from the service ports as
one iptables-restore input (pure: no commands run here).

Follows upstream's pkg/proxy/iptables/proxier.go, syncProxyRules:

nat table
    PREROUTING, OUTPUT -> KUBE-SERVICES; POSTROUTING -> KUBE-POSTROUTING (jump rules,
    kept by iptables.py: they live in built-in chains that a restore must not rewrite)
    KUBE-SERVICES     ClusterIP:port -> KUBE-SVC (or KUBE-SVL with Local internal
                      policy); external IPs / LB IPs -> KUBE-EXT; last, traffic to the
                      node's own addresses -> KUBE-NODEPORTS
    KUBE-NODEPORTS    NodePort -> KUBE-EXT
    KUBE-EXT-*        Cluster policy: mark for masquerade, -> KUBE-SVC; Local policy:
                      pod and node traffic short-circuits to KUBE-SVC, the rest ->
                      KUBE-SVL (client source IP kept)
    KUBE-SVC-*/SVL-*  ClusterIP traffic from outside the pod range marked for masquerade;
                      ClientIP affinity (`-m recent --rcheck`); then one rule per
                      endpoint, `-m statistic --mode random --probability 1/(n-i)`
    KUBE-SEP-*        hairpin (endpoint to itself) masquerade; `-m recent --set`; DNAT
    KUBE-MARK-MASQ    sets the masquerade bit; KUBE-POSTROUTING masquerades marked packets
filter table
    KUBE-SERVICES / KUBE-EXTERNAL-SERVICES  REJECT for services without endpoints (so
                      clients fail at once), DROP with Local policy and no local ones
    KUBE-FORWARD      drops INVALID, accepts marked and RELATED,ESTABLISHED forwarding
    KUBE-NODEPORTS    accepts health-check node ports
    KUBE-PROXY-FIREWALL  loadBalancerSourceRanges drops
    KUBE-FIREWALL     (with localhost NodePorts) drops martian packets to 127.0.0.0/8

Every chain of kube-proxy is declared (":CHAIN - [0:0]", which flushes it) and filled
anew, so the text is the full desired state; stale service chains are flushed and
deleted (`-X`) by the caller, who knows which exist.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from kubesmith.proxy.servicemap import ServicePort, categorize

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"

FILTER_CHAINS = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS,
                 KUBE_PROXY_FIREWALL)
NAT_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")

# Above this many endpoints, comments are left out (upstream's large cluster mode).
LARGE_CLUSTER_ENDPOINTS = 1000


@dataclass(frozen=True)
class JumpRule:
    """A rule in a built-in chain sending packets to one of kube-proxy's chains."""
    table: str
    chain: str           # the built-in chain
    target: str
    comment: str
    extra: tuple[str, ...] = ()

    def args(self) -> list[str]:
        args = list(self.extra)
        if self.comment:
            args += ["-m", "comment", "--comment", self.comment]
        return args + ["-j", self.target]


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
JUMP_RULES = (
    JumpRule("filter", "INPUT", KUBE_EXTERNAL_SERVICES,
             "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_EXTERNAL_SERVICES,
             "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("filter", "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall",
             _NEW),
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)
# The kubelet keeps these too (its copy of the anti-martian rule); only with localhost
# NodePorts.
LOCALHOST_JUMP_RULES = (
    JumpRule("filter", "INPUT", KUBE_FIREWALL, ""),
    JumpRule("filter", "OUTPUT", KUBE_FIREWALL, ""),
)


def is_service_chain(name: str) -> bool:
    return name.startswith(SERVICE_CHAIN_PREFIXES)


@dataclass
class RuleOptions:
    masquerade_mark: str = "0x4000"          # 1 << masqueradeBit
    masquerade_all: bool = False
    # The pod range: traffic from it is "local" (from pods); empty: not detected.
    cluster_cidrs: list[str] = field(default_factory=list)
    # None: NodePorts on every local address; else only on these addresses.
    node_port_ips: list[str] | None = None
    localhost_node_ports: bool = True
    node_ips: list[str] = field(default_factory=list)
    conntrack_tcp_liberal: bool = False
    random_fully: bool = True        # iptables >= 1.6.2 and the kernel support it

    @staticmethod
    def mark_for_bit(bit: int) -> str:
        return hex(1 << bit)


def _quote(text: str) -> str:
    return f'"{text}"' if (" " in text or not text) else text


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, *words: str) -> None:
        self.lines.append(" ".join(words))

    def __len__(self) -> int:
        return len(self.lines)


@dataclass
class RuleSet:
    filter_chains: list[str]
    filter_rules: list[str]
    nat_chains: list[str]
    nat_rules: list[str]
    active_nat_chains: set[str]
    jump_rules: tuple[JumpRule, ...]
    # Metrics of the sync.
    services: int = 0
    endpoints: int = 0
    no_local_endpoints_internal: int = 0
    no_local_endpoints_external: int = 0

    def restore_input(self, stale_nat_chains: list[str] = ()) -> str:
        """The iptables-restore --noflush input; `stale_nat_chains` are flushed and
        deleted in the same transaction."""
        nat_chains = self.nat_chains + [f":{chain} - [0:0]" for chain in stale_nat_chains]
        nat_rules = self.nat_rules + [f"-X {chain}" for chain in stale_nat_chains]
        return "\n".join(["*filter", *self.filter_chains, *self.filter_rules, "COMMIT",
                          "*nat", *nat_chains, *nat_rules, "COMMIT", ""])


def build_rules(services: list[ServicePort], options: RuleOptions) -> RuleSet:
    mark = options.masquerade_mark
    filter_chains = [f":{chain} - [0:0]" for chain in FILTER_CHAINS]
    nat_chains = _Lines()
    nat_chains.lines = [f":{chain} - [0:0]" for chain in NAT_CHAINS]
    filter_rules, nat_rules = _Lines(), _Lines()
    jump_rules = JUMP_RULES

    nat_rules.write("-A", KUBE_POSTROUTING, "-m", "mark", "!", "--mark", f"{mark}/{mark}",
                    "-j", "RETURN")
    # Clear the mark so a packet going through the stack again is not masqueraded twice.
    nat_rules.write("-A", KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", mark)
    nat_rules.write("-A", KUBE_POSTROUTING, "-m", "comment", "--comment",
                    '"kubernetes service traffic requiring SNAT"', "-j", "MASQUERADE",
                    *(["--random-fully"] if options.random_fully else []))
    nat_rules.write("-A", KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", mark)

    if options.localhost_node_ports:
        filter_chains.append(f":{KUBE_FIREWALL} - [0:0]")
        filter_rules.write("-A", KUBE_FIREWALL, "-m", "comment", "--comment",
                           '"block incoming localnet connections"', "-d", "127.0.0.0/8",
                           "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate",
                           "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
        jump_rules = JUMP_RULES + LOCALHOST_JUMP_RULES

    # Traffic from pods, by source address (upstream's ClusterCIDR local detector).
    pod_range = options.cluster_cidrs[0] if options.cluster_cidrs else ""
    if_local = ["-s", pod_range] if pod_range else []
    if_not_local = ["!", "-s", pod_range] if pod_range else []

    active: set[str] = set()
    total_endpoints = sum(len(svc.endpoints) for svc in services)
    large = total_endpoints > LARGE_CLUSTER_ENDPOINTS
    no_local_internal = no_local_external = 0

    def comment(text: str) -> list[str]:
        return [] if large else ["-m", "comment", "--comment", _quote(text)]

    for svc in services:
        name, proto = svc.name, svc.proto
        cat = categorize(svc)
        uses_cluster_chain = bool(cat.cluster) and svc.uses_cluster_endpoints()
        uses_local_chain = bool(cat.local) and svc.uses_local_endpoints()

        internal_chain = svc.cluster_chain
        has_internal = cat.has_any
        if svc.internal_policy_local:
            internal_chain = svc.local_chain
            has_internal = has_internal and bool(cat.local)
        external_policy_chain = svc.cluster_chain
        has_external = cat.has_any
        if svc.external_policy_local:
            external_policy_chain = svc.local_chain
            has_external = has_external and bool(cat.local)
        external_chain = svc.external_chain
        uses_external_chain = cat.has_any and svc.externally_accessible
        lb_chain = external_chain
        uses_fw_chain = (cat.has_any and bool(svc.load_balancer_ips)
                         and bool(svc.load_balancer_source_ranges))
        if uses_fw_chain:
            lb_chain = svc.firewall_chain

        if not cat.has_any:
            internal_target = external_target = "REJECT"
            internal_comment = external_comment = f"{name} has no endpoints"
        else:
            internal_target = external_target = ""
            internal_comment = external_comment = ""
            if not has_internal:
                internal_target, internal_comment = "DROP", f"{name} has no local endpoints"
                no_local_internal += 1
            if not has_external:
                external_target, external_comment = "DROP", f"{name} has no local endpoints"
                no_local_external += 1

        match = ["-m", proto, "-p", proto]
        cluster_ip = ["-d", svc.cluster_ip, "--dport", str(svc.port)]
        if has_internal:
            nat_rules.write("-A", KUBE_SERVICES, "-m", "comment", "--comment",
                            _quote(f"{name} cluster IP"), *match, *cluster_ip,
                            "-j", internal_chain)
        else:
            filter_rules.write("-A", KUBE_SERVICES, "-m", "comment", "--comment",
                               _quote(internal_comment), *match, *cluster_ip,
                               "-j", internal_target)

        for external_ip in svc.external_ips:
            dest = ["-d", external_ip, "--dport", str(svc.port)]
            if cat.has_any:
                nat_rules.write("-A", KUBE_SERVICES, "-m", "comment", "--comment",
                                _quote(f"{name} external IP"), *match, *dest,
                                "-j", external_chain)
            if not has_external:
                filter_rules.write("-A", KUBE_EXTERNAL_SERVICES, "-m", "comment",
                                   "--comment", _quote(external_comment), *match, *dest,
                                   "-j", external_target)

        for lb_ip in svc.load_balancer_ips:
            dest = ["-d", lb_ip, "--dport", str(svc.port)]
            if cat.has_any:
                nat_rules.write("-A", KUBE_SERVICES, "-m", "comment", "--comment",
                                _quote(f"{name} loadbalancer IP"), *match, *dest,
                                "-j", lb_chain)
            if uses_fw_chain:
                filter_rules.write("-A", KUBE_PROXY_FIREWALL, "-m", "comment", "--comment",
                                   _quote(f"{name} traffic not accepted by "
                                          f"{svc.firewall_chain}"),
                                   *match, *dest, "-j", "DROP")
        if not has_external:
            for lb_ip in svc.load_balancer_ips:
                filter_rules.write("-A", KUBE_EXTERNAL_SERVICES, "-m", "comment",
                                   "--comment", _quote(external_comment), *match,
                                   "-d", lb_ip, "--dport", str(svc.port),
                                   "-j", external_target)

        if svc.node_port:
            if cat.has_any:
                nat_rules.write("-A", KUBE_NODEPORTS, "-m", "comment", "--comment",
                                _quote(name), *match, "--dport", str(svc.node_port),
                                "-j", external_chain)
            if not has_external:
                filter_rules.write("-A", KUBE_EXTERNAL_SERVICES, "-m", "comment",
                                   "--comment", _quote(external_comment),
                                   "-m", "addrtype", "--dst-type", "LOCAL", *match,
                                   "--dport", str(svc.node_port), "-j", external_target)

        if svc.health_check_node_port:
            filter_rules.write("-A", KUBE_NODEPORTS, "-m", "comment", "--comment",
                               _quote(f"{name} health check node port"), "-m", "tcp",
                               "-p", "tcp", "--dport", str(svc.health_check_node_port),
                               "-j", "ACCEPT")

        # ClusterIP traffic that needs SNAT: all with masqueradeAll, else that from
        # outside the pod range (a node, or a host routing the service range here),
        # whose replies must come back through this node to be un-DNATed.
        if has_internal:
            head = ["-A", internal_chain, "-m", "comment", "--comment",
                    _quote(f"{name} cluster IP"), *match, *cluster_ip]
            if options.masquerade_all:
                nat_rules.write(*head, "-j", KUBE_MARK_MASQ)
            elif if_not_local:
                nat_rules.write(*head, *if_not_local, "-j", KUBE_MARK_MASQ)

        if uses_external_chain:
            nat_chains.write(f":{external_chain} - [0:0]")
            active.add(external_chain)
            if not svc.external_policy_local:
                # The endpoint may be on another node: masquerade so replies come back.
                nat_rules.write("-A", external_chain, "-m", "comment", "--comment",
                                _quote(f"masquerade traffic for {name} external "
                                       "destinations"), "-j", KUBE_MARK_MASQ)
            else:
                if if_local:
                    # Pods reaching an external address of the service get any endpoint
                    # (as if they had gone out to a load balancer and back).
                    nat_rules.write("-A", external_chain, "-m", "comment", "--comment",
                                    _quote(f"pod traffic for {name} external destinations"),
                                    *if_local, "-j", svc.cluster_chain)
                nat_rules.write("-A", external_chain, "-m", "comment", "--comment",
                                _quote(f"masquerade LOCAL traffic for {name} external "
                                       "destinations"),
                                "-m", "addrtype", "--src-type", "LOCAL", "-j", KUBE_MARK_MASQ)
                nat_rules.write("-A", external_chain, "-m", "comment", "--comment",
                                _quote(f"route LOCAL traffic for {name} external "
                                       "destinations"),
                                "-m", "addrtype", "--src-type", "LOCAL",
                                "-j", svc.cluster_chain)
            if has_external:
                nat_rules.write("-A", external_chain, "-j", external_policy_chain)

        if uses_fw_chain:
            fw = svc.firewall_chain
            nat_chains.write(f":{fw} - [0:0]")
            active.add(fw)
            head = ["-A", fw, "-m", "comment", "--comment", _quote(f"{name} loadbalancer IP")]
            allow_from_node = False
            for cidr in svc.load_balancer_source_ranges:
                nat_rules.write(*head, "-s", cidr, "-j", external_chain)
                try:
                    net = ipaddress.ip_network(cidr, strict=False)
                    allow_from_node = allow_from_node or any(
                        ipaddress.ip_address(ip) in net for ip in options.node_ips)
                except ValueError:
                    pass
            if allow_from_node:
                for lb_ip in svc.load_balancer_ips:
                    nat_rules.write(*head, "-s", lb_ip, "-j", external_chain)
            nat_rules.write("-A", fw, "-m", "comment", "--comment",
                            _quote(f"other traffic to {name} will be dropped by "
                                   f"{KUBE_PROXY_FIREWALL}"))

        for chain, endpoints, used in ((svc.cluster_chain, cat.cluster, uses_cluster_chain),
                                       (svc.local_chain, cat.local, uses_local_chain)):
            if not used:
                continue
            nat_chains.write(f":{chain} - [0:0]")
            active.add(chain)
            if svc.session_affinity_seconds:
                for ep in endpoints:
                    nat_rules.write("-A", chain, *comment(f"{name} -> {ep}"),
                                    "-m", "recent", "--name", ep.chain, "--rcheck",
                                    "--seconds", str(svc.session_affinity_seconds),
                                    "--reap", "-j", ep.chain)
            count = len(endpoints)
            for i, ep in enumerate(endpoints):
                spread = []
                if i < count - 1:
                    spread = ["-m", "statistic", "--mode", "random",
                              "--probability", f"{1.0 / (count - i):0.10f}"]
                nat_rules.write("-A", chain, *comment(f"{name} -> {ep}"), *spread,
                                "-j", ep.chain)

        for ep in cat.reachable:
            nat_chains.write(f":{ep.chain} - [0:0]")
            active.add(ep.chain)
            head = ["-A", ep.chain, *comment(name)]
            # Hairpin: a pod reaching itself through the service must see the reply
            # come from the service, so the packet is masqueraded.
            nat_rules.write(*head, "-s", ep.ip, "-j", KUBE_MARK_MASQ)
            affinity = (["-m", "recent", "--name", ep.chain, "--set"]
                        if svc.session_affinity_seconds else [])
            nat_rules.write(*head, *affinity, *match, "-j", "DNAT", "--to-destination",
                            str(ep))

    # NodePorts last: only packets no service rule took are for a node port.
    nodeports_comment = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    if options.node_port_ips is None:
        local = ["-m", "addrtype", "--dst-type", "LOCAL"]
        if not options.localhost_node_ports:
            local += ["!", "-d", "127.0.0.0/8"]
        nat_rules.write("-A", KUBE_SERVICES, "-m", "comment", "--comment", nodeports_comment,
                        *local, "-j", KUBE_NODEPORTS)
    else:
        for ip in options.node_port_ips:
            if ipaddress.ip_address(ip).is_loopback and not options.localhost_node_ports:
                continue
            nat_rules.write("-A", KUBE_SERVICES, "-m", "comment", "--comment",
                            nodeports_comment, "-d", ip, "-j", KUBE_NODEPORTS)

    if not options.conntrack_tcp_liberal:
        # Out-of-window packets would otherwise reset connections (upstream #74839).
        filter_rules.write("-A", KUBE_FORWARD, "-m", "conntrack", "--ctstate", "INVALID",
                           "-j", "DROP")
    filter_rules.write("-A", KUBE_FORWARD, "-m", "comment", "--comment",
                       '"kubernetes forwarding rules"', "-m", "mark", "--mark",
                       f"{mark}/{mark}", "-j", "ACCEPT")
    filter_rules.write("-A", KUBE_FORWARD, "-m", "comment", "--comment",
                       '"kubernetes forwarding conntrack rule"', "-m", "conntrack",
                       "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")

    return RuleSet(filter_chains=filter_chains, filter_rules=filter_rules.lines,
                   nat_chains=nat_chains.lines, nat_rules=nat_rules.lines,
                   active_nat_chains=active, jump_rules=jump_rules,
                   services=len(services), endpoints=total_endpoints,
                   no_local_endpoints_internal=no_local_internal,
                   no_local_endpoints_external=no_local_external)
