"""WebFetch's URL, judged as the fetch will take it: parsed the way a WHATWG URL parser does
(what Claude Code's fetch uses), its host mapped by UTS-46 and resolved, and every address it
leads to checked against loopback, private, link-local, shared and metadata ranges.

Why not urlsplit: it reads `http://127.0.0.1\\@evil.com/` and `http://①②⑦.0.0.1/` differently
from a browser-grade parser, which strips tabs and newlines, reads `\\` as `/`, percent-decodes the
host, maps full-width and circled digits and `。` to ASCII, and reads `0x7f.1` or `017700000001`
as IPv4. Anything this parser cannot decide (a host that does not resolve, a form it does not
know, a non-ASCII host without the idna package) is denied: the fetch is refused, never guessed.

A name is resolved here and again by the fetch; a DNS server that answers differently the second
time (rebinding) is outside what a hook can see: the sandbox, not this check, is the boundary.
"""
from __future__ import annotations

import ipaddress
import socket

RESOLVE_TIMEOUT = 2.0                   # seconds; the hook's own alarm is 5
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".intranet", ".corp")
FORBIDDEN_HOST = set(" #%/:<>?@[\\]^|") | {chr(c) for c in range(0x20)} | {"\x7f"}
SPECIAL_PORTS = {"http": 80, "https": 443}


class Refused(Exception):
    """The URL cannot be fetched; str(self) is the reason, for the agent."""


def url_problem(url, resolve=None) -> str | None:
    """Why WebFetch may not fetch `url` (None: it may). `resolve(host, port)` -> addresses (tests
    pass their own; default: the system resolver, with a time limit)."""
    try:
        host, port = parse_host(url)
        check_host(host, port, resolve or system_resolve)
    except Refused as e:
        return str(e)
    return None


def parse_host(url) -> tuple[str | ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """(host, port) as a WHATWG URL parser reads them from an http(s) URL: an address for an IP
    host, else the lower-case ASCII (punycode) domain. Raises Refused."""
    if not isinstance(url, str) or "\x00" in url:
        raise Refused("malformed url")
    s = url.strip("".join(chr(c) for c in range(0x21)))
    s = s.replace("\t", "").replace("\n", "").replace("\r", "")
    colon = s.find(":")
    scheme = s[:colon].lower() if colon > 0 else ""
    if scheme not in SPECIAL_PORTS or not all(c.isascii() and (c.isalnum() or c in "+-.") for c in scheme):
        raise Refused("only http(s) URLs can be fetched")
    rest = s[colon + 1:].lstrip("/\\")               # special schemes: any run of / and \ before the host
    end = min([i for i in (rest.find(c) for c in "/\\?#") if i >= 0], default=len(rest))
    authority = rest[:end]
    hostport = authority.rsplit("@", 1)[-1]
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise Refused("malformed url: an IPv6 host without ']'")
        host, after = hostport[:close + 1], hostport[close + 1:]
        if after and not after.startswith(":"):
            raise Refused("malformed url: text after the IPv6 host")
        port_text = after[1:]
    else:
        host, _, port_text = hostport.partition(":")
    if port_text and not (port_text.isascii() and port_text.isdigit() and int(port_text) < 65536):
        raise Refused("malformed url: the port is not a number")
    port = int(port_text) if port_text else SPECIAL_PORTS[scheme]
    if not host:
        raise Refused("malformed url: no host")
    if host.startswith("["):
        inner = host[1:-1]
        if "%" in inner or not inner:
            raise Refused(f"{host}: IPv6 zone ids and malformed IPv6 hosts are not fetched")
        try:
            return ipaddress.IPv6Address(inner), port
        except ValueError:
            raise Refused(f"{host}: malformed IPv6 host") from None
    return domain_or_ipv4(host), port


def domain_or_ipv4(host: str):
    """WHATWG's host parser for a non-bracketed host: percent-decode, UTS-46 map, forbidden code
    points, then IPv4 when it ends in a number."""
    from urllib.parse import unquote_to_bytes
    raw = unquote_to_bytes(host)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(f"{host}: the host is not UTF-8 after percent-decoding") from None
    if text.isascii():
        mapped = text.lower()
    else:
        try:
            import idna
            mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
        except ImportError:
            raise Refused(f"{host}: a non-ASCII host cannot be checked here (the idna package is missing)") from None
        except Exception:           # noqa: BLE001 - idna.IDNAError and kin: WHATWG fails the URL too
            raise Refused(f"{host}: not a valid host name") from None
        mapped = mapped.lower()
    if not mapped or any(c in FORBIDDEN_HOST for c in mapped) or "\ufffd" in mapped:
        raise Refused(f"{host}: not a valid host name")
    labels = mapped.split(".")
    last = labels[-1] if labels[-1] or len(labels) == 1 else labels[-2]
    if last and (last.isascii() and last.isdigit() or _hex(last) is not None):
        return ipv4(mapped, host)
    try:
        return ".".join(lab if lab.isascii() else "xn--" + lab.encode("punycode").decode("ascii")
                        for lab in labels)
    except UnicodeError:
        raise Refused(f"{host}: not a valid host name") from None


def _hex(part: str) -> int | None:
    if part[:2] in ("0x", "0X"):
        digits = part[2:]
        if digits == "":
            return 0
        if digits.isascii() and all(c in "0123456789abcdefABCDEF" for c in digits):
            return int(digits, 16)
    return None


def ipv4(text: str, shown: str) -> ipaddress.IPv4Address:
    """WHATWG's IPv4 parser: 1 to 4 parts, each decimal, 0x-hex or 0-octal; the last fills the rest."""
    parts = text.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4 or any(p == "" for p in parts):
        raise Refused(f"{shown}: malformed IPv4 address")
    nums = []
    for p in parts:
        h = _hex(p)
        if h is not None:
            nums.append(h)
        elif p.isascii() and p.isdigit():
            nums.append(int(p, 8) if len(p) > 1 and p[0] == "0" and all(c in "01234567" for c in p)
                        else _decimal(p, shown))
        else:
            raise Refused(f"{shown}: malformed IPv4 address")
    if any(n > 255 for n in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
        raise Refused(f"{shown}: malformed IPv4 address")
    value = nums[-1]
    for i, n in enumerate(nums[:-1]):
        value += n * 256 ** (3 - i)
    return ipaddress.IPv4Address(value)


def _decimal(p: str, shown: str) -> int:
    if len(p) > 1 and p[0] == "0":          # 08, 09: not octal, and WHATWG fails them
        raise Refused(f"{shown}: malformed IPv4 address")
    return int(p)


def embedded(ip) -> list:
    """The address and every IPv4 address it carries (mapped, compatible, 6to4, Teredo, NAT64)."""
    out = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        n = int(ip)
        if ip.ipv4_mapped:
            out.append(ip.ipv4_mapped)
        if ip.sixtofour:
            out.append(ip.sixtofour)
        if ip.teredo:
            out += list(ip.teredo)
        if n >> 32 == 0 or ip in ipaddress.IPv6Network("64:ff9b::/96") or ip in ipaddress.IPv6Network("64:ff9b:1::/48"):
            out.append(ipaddress.IPv4Address(n & 0xFFFFFFFF))
    return out


def public(ip) -> bool:
    return all(a.is_global and not a.is_multicast for a in embedded(ip))


def check_host(host, port: int, resolve) -> None:
    """Raise Refused unless every address `host` stands for is on the public internet."""
    if not isinstance(host, str):
        if not public(host):
            raise Refused(f"{host} is not a public address: only the public web can be fetched")
        return
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(LOCAL_SUFFIXES) or "." not in name:
        raise Refused(f"{host} is a local name: only the public web can be fetched")
    try:
        addresses = resolve(name, port)
    except Refused:
        raise
    except Exception as e:          # noqa: BLE001 - cannot be decided: denied
        raise Refused(f"{host} could not be resolved ({type(e).__name__}), so the guard cannot tell where it "
                      f"leads: only names that resolve to public addresses can be fetched") from None
    if not addresses:
        raise Refused(f"{host} could not be resolved: only names that resolve to public addresses can be fetched")
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a.split("%", 1)[0] if isinstance(a, str) else a)
        except ValueError:
            raise Refused(f"{host} resolves to {a!r}, which is not an address") from None
        if not public(ip):
            raise Refused(f"{host} resolves to {ip}, which is not a public address: only the public web "
                          f"can be fetched")


def system_resolve(name: str, port: int) -> list[str]:
    """Every address the system resolver gives for `name`, within RESOLVE_TIMEOUT seconds."""
    import threading
    box: dict = {}

    def run() -> None:
        try:
            box["ok"] = [info[4][0] for info in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)]
        except Exception as e:      # noqa: BLE001 - reported by the caller
            box["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(RESOLVE_TIMEOUT)
    if "ok" in box:
        return box["ok"]
    raise box.get("err") or TimeoutError(f"no answer within {RESOLVE_TIMEOUT:g} s")
