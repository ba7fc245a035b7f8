//! Which addresses a request may connect to. Public unicast addresses are open to any
//! granted destination; the rest (loopback, private, link-local with the cloud
//! metadata services, shared, reserved, multicast) only to a grant that names them.
//! IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4) are judged
//! by that IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not open to every destination, or `None` for a public one.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => special_v4(v4).or_else(|| (v6.segments()[0] == 0x2002).then_some("6to4")),
            None => special_v6(v6),
        },
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified or \"this network\"",
        (127, ..) => "loopback",
        (10, ..) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (169, 254, _) => "link-local (cloud metadata services live here)",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (192, 0, 0) => "IETF protocol assignments",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved or broadcast",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback",
        [x, ..] if x & 0xfe00 == 0xfc00 => {
            "unique local (private; the fd00:ec2::254 metadata service is here)"
        }
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast",
        [0x2001, 0xdb8, ..] => "documentation",
        [0x2001, 0, ..] => "Teredo",
        [0x100, 0, 0, 0, ..] => "discard",
        _ => return None,
    })
}

/// The IPv4 address inside an IPv6 one, for the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated)
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        // 64:ff9b::a.b.c.d and 64:ff9b:1::/48 (NAT64)
        [0x64, 0xff9b, _, _, _, _, hi, lo] => Some(v4(hi, lo)),
        // 2002:aabb:ccdd::/48 (6to4)
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// An address or a block of them (`10.0.0.0/8`, `fd00::/8`), as a grant names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    base: IpAddr,
    bits: u8,
}

impl Block {
    pub fn parse(text: &str) -> Result<Block, String> {
        let (ip, bits) = match text.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (text, None),
        };
        let base: IpAddr =
            ip.parse().map_err(|_| format!("`{text}` is not an address or an address/prefix"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(bits) => bits
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{text}`: bad prefix"))?,
            None => max,
        };
        // A mapped block (`::ffff:10.0.0.0/104`) is the IPv4 block it maps.
        let canon = canonical(base);
        let bits = if base.is_ipv6() && canon.is_ipv4() { bits.saturating_sub(96) } else { bits };
        Ok(Block { base: canon, bits })
    }

    pub fn single(ip: IpAddr) -> Block {
        let ip = canonical(ip);
        Block { base: ip, bits: if ip.is_ipv4() { 32 } else { 128 } }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, canonical(ip)) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(base) as u128, u32::from(ip) as u128, self.bits, 32)
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => prefix_eq(u128::from(base), u128::from(ip), self.bits, 128),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, width: u8) -> bool {
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (a >> shift) == (b >> shift)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_addresses_of_this_machine_its_networks_and_the_metadata_services_are_special() {
        for text in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(special(ip(text)).is_some(), "{text} should be special");
        }
        for text in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(special(ip(text)), None, "{text} is public");
        }
    }

    #[test]
    fn a_block_holds_its_addresses_in_either_spelling() {
        let block = Block::parse("10.0.0.0/8").unwrap();
        assert!(block.contains(ip("10.200.0.1")));
        assert!(block.contains(ip("::ffff:10.0.0.1")), "mapped");
        assert!(!block.contains(ip("11.0.0.1")));
        let one = Block::single(ip("::ffff:127.0.0.1"));
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        assert!(Block::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Block::parse("10.0.0.0/33").is_err());
        assert!(Block::parse("localhost").is_err());
    }
}
