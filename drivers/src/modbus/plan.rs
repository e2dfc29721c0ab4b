//! Coalesced reads: the points of a poll group merged into as few Modbus
//! requests as the protocol allows (125 registers or 2000 bits per
//! request), bridging unused gaps up to a configured size; and the split
//! of a merged request that a device rejects with "illegal data address".
//!
//! Points are sorted by address and merged greedily: each request takes
//! the next point while the request's span stays within the limit and the
//! unused gap before the point stays within `max_gap`. For contiguous runs
//! of sorted points this is the minimum number of requests (the tests
//! check it against an exhaustive search).

use serde::Deserialize;

/// The four Modbus data areas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// Read/write bits (function codes 1, 5, 15).
    Coil,
    /// Read-only bits (function code 2).
    DiscreteInput,
    /// Read-only registers (function code 4).
    InputRegister,
    /// Read/write registers (function codes 3, 6, 16).
    HoldingRegister,
}

impl Area {
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::DiscreteInput)
    }

    pub fn is_writable(self) -> bool {
        matches!(self, Area::Coil | Area::HoldingRegister)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Coil => "coil",
            Area::DiscreteInput => "discrete_input",
            Area::InputRegister => "input_register",
            Area::HoldingRegister => "holding_register",
        }
    }
}

/// The protocol's limits per read request.
pub const MAX_READ_REGISTERS: u16 = 125;
pub const MAX_READ_BITS: u16 = 2000;

/// Where one point's data sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub area: Area,
    pub address: u16,
    /// Registers (or bits) it occupies, at least 1.
    pub width: u16,
}

impl Span {
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.width)
    }
}

/// How far requests may stretch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most unused registers read to join two points into one request.
    pub register_gap: u16,
    /// Most unused bits read to join two points into one request.
    pub bit_gap: u16,
    pub max_registers: u16,
    pub max_bits: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            register_gap: 8,
            bit_gap: 64,
            max_registers: MAX_READ_REGISTERS,
            max_bits: MAX_READ_BITS,
        }
    }
}

impl Limits {
    fn for_area(&self, area: Area) -> (u32, u32) {
        if area.is_bits() {
            (u32::from(self.max_bits), u32::from(self.bit_gap))
        } else {
            (u32::from(self.max_registers), u32::from(self.register_gap))
        }
    }
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub area: Area,
    pub start: u16,
    pub count: u16,
    /// Indexes into the spans the plan was made from.
    pub points: Vec<usize>,
}

impl ReadRequest {
    fn covering(area: Area, points: Vec<usize>, spans: &[Span]) -> Self {
        let start = points.iter().map(|&p| spans[p].address).min().unwrap_or(0);
        let end = points
            .iter()
            .map(|&p| spans[p].end())
            .max()
            .unwrap_or(u32::from(start));
        Self {
            area,
            start,
            count: (end - u32::from(start)) as u16,
            points,
        }
    }
}

/// The requests that read all `spans`, fewest first.
pub fn coalesce(spans: &[Span], limits: &Limits) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| {
        (
            spans[i].area,
            spans[i].address,
            std::cmp::Reverse(spans[i].width),
        )
    });
    let mut requests: Vec<ReadRequest> = Vec::new();
    let mut current: Option<(Area, u32, u32, Vec<usize>)> = None;
    for i in order {
        let span = spans[i];
        let (max_len, max_gap) = limits.for_area(span.area);
        if let Some((area, start, end, points)) = &mut current
            && *area == span.area
            && u32::from(span.address) <= *end + max_gap
            && (*end).max(span.end()) - *start <= max_len
        {
            *end = (*end).max(span.end());
            points.push(i);
            continue;
        }
        if let Some((area, _, _, points)) = current.take() {
            requests.push(ReadRequest::covering(area, points, spans));
        }
        current = Some((span.area, u32::from(span.address), span.end(), vec![i]));
    }
    if let Some((area, _, _, points)) = current {
        requests.push(ReadRequest::covering(area, points, spans));
    }
    requests
}

/// What to do after a device rejected `request` as an illegal address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// Try these two smaller requests instead.
    Halves(ReadRequest, ReadRequest),
    /// The request reads a single point: that point cannot be read.
    Unreadable(usize),
}

/// Splits a rejected request at the widest unused gap between its points
/// (where a hole in the device's map most likely is), or in the middle.
pub fn split(request: &ReadRequest, spans: &[Span]) -> Split {
    let mut points = request.points.clone();
    if points.len() <= 1 {
        return Split::Unreadable(points.first().copied().unwrap_or(usize::MAX));
    }
    points.sort_by_key(|&p| spans[p].address);
    let mut best = (points.len() / 2, i64::MIN);
    let mut left_end = 0u32;
    for k in 1..points.len() {
        left_end = left_end.max(spans[points[k - 1]].end());
        let gap = i64::from(spans[points[k]].address) - i64::from(left_end);
        if gap > best.1 {
            best = (k, gap);
        }
    }
    let (k, gap) = best;
    let k = if gap <= 0 { points.len() / 2 } else { k };
    let right = points.split_off(k);
    Split::Halves(
        ReadRequest::covering(request.area, points, spans),
        ReadRequest::covering(request.area, right, spans),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(list: &[(u16, u16)]) -> Vec<Span> {
        list.iter()
            .map(|&(address, width)| Span {
                area: Area::HoldingRegister,
                address,
                width,
            })
            .collect()
    }

    /// The fewest requests by exhaustive search over contiguous runs of
    /// address-sorted points (dynamic programming).
    fn minimum(spans: &[Span], limits: &Limits) -> usize {
        let mut sorted = spans.to_vec();
        sorted.sort_by_key(|s| (s.area, s.address, std::cmp::Reverse(s.width)));
        let n = sorted.len();
        let mut best = vec![usize::MAX; n + 1];
        best[0] = 0;
        for i in 1..=n {
            for j in 0..i {
                let run = &sorted[j..i];
                if best[j] == usize::MAX || run.iter().any(|s| s.area != run[0].area) {
                    continue;
                }
                let (max_len, max_gap) = limits.for_area(run[0].area);
                let start = u32::from(run[0].address);
                let mut end = run[0].end();
                let mut ok = true;
                for s in &run[1..] {
                    if u32::from(s.address) > end + max_gap {
                        ok = false;
                    }
                    end = end.max(s.end());
                }
                if ok && end - start <= max_len {
                    best[i] = best[i].min(best[j] + 1);
                }
            }
        }
        best[n]
    }

    fn check(spans: &[Span], limits: &Limits) -> Vec<ReadRequest> {
        let requests = coalesce(spans, limits);
        assert_eq!(
            requests.len(),
            minimum(spans, limits),
            "{spans:?} -> {requests:?}"
        );
        let mut served: Vec<usize> = requests.iter().flat_map(|r| r.points.clone()).collect();
        served.sort();
        assert_eq!(
            served,
            (0..spans.len()).collect::<Vec<_>>(),
            "every point exactly once"
        );
        for r in &requests {
            let (max_len, _) = limits.for_area(r.area);
            assert!(u32::from(r.count) <= max_len);
            for &p in &r.points {
                assert_eq!(spans[p].area, r.area);
                assert!(
                    spans[p].address >= r.start
                        && spans[p].end() <= u32::from(r.start) + u32::from(r.count)
                );
            }
        }
        requests
    }

    #[test]
    fn contiguous_points_become_one_request() {
        let spans = regs(&[(0, 2), (2, 2), (4, 1), (5, 4)]);
        let requests = check(&spans, &Limits::default());
        assert_eq!(requests.len(), 1);
        assert_eq!((requests[0].start, requests[0].count), (0, 9));
    }

    #[test]
    fn gaps_are_bridged_up_to_the_limit() {
        let spans = regs(&[(0, 1), (9, 1), (30, 2)]);
        let requests = check(
            &spans,
            &Limits {
                register_gap: 8,
                ..Limits::default()
            },
        );
        // 1..9 is a gap of 8 (bridged), 10..30 of 20 (not).
        assert_eq!(
            requests
                .iter()
                .map(|r| (r.start, r.count))
                .collect::<Vec<_>>(),
            [(0, 10), (30, 2)]
        );
        let requests = check(
            &spans,
            &Limits {
                register_gap: 0,
                ..Limits::default()
            },
        );
        assert_eq!(requests.len(), 3);
    }

    #[test]
    fn the_protocol_limit_splits_long_maps() {
        // 300 contiguous f32 points: 600 registers → 5 requests of <= 125.
        let spans: Vec<Span> = regs(&(0..300).map(|i| (i * 2, 2)).collect::<Vec<_>>());
        let requests = check(&spans, &Limits::default());
        assert_eq!(requests.len(), 5);
        // 2,500 coils → 2 requests of <= 2000 bits (too many points for
        // the exhaustive search: the count is known).
        let coils: Vec<Span> = (0..2500)
            .map(|a| Span {
                area: Area::Coil,
                address: a,
                width: 1,
            })
            .collect();
        let requests = coalesce(&coils, &Limits::default());
        assert_eq!(
            requests
                .iter()
                .map(|r| (r.start, r.count))
                .collect::<Vec<_>>(),
            [(0, 2000), (2000, 500)]
        );
    }

    #[test]
    fn areas_never_mix_and_bits_share_registers() {
        let mut spans = regs(&[(0, 1), (0, 1), (1, 2)]); // two bit points on register 0
        spans.push(Span {
            area: Area::InputRegister,
            address: 0,
            width: 2,
        });
        spans.push(Span {
            area: Area::Coil,
            address: 0,
            width: 1,
        });
        spans.push(Span {
            area: Area::DiscreteInput,
            address: 3,
            width: 1,
        });
        let requests = check(&spans, &Limits::default());
        assert_eq!(requests.len(), 4);
    }

    #[test]
    fn random_maps_get_the_minimum_number_of_requests() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..300 {
            let areas = [Area::HoldingRegister, Area::InputRegister, Area::Coil];
            let mut spans = Vec::new();
            for _ in 0..(1 + next(40)) {
                let area = areas[next(3) as usize];
                let width = if area.is_bits() {
                    1
                } else {
                    [1, 2, 4, 10][next(4) as usize] as u16
                };
                spans.push(Span {
                    area,
                    address: next(600) as u16,
                    width,
                });
            }
            let limits = Limits {
                register_gap: next(20) as u16,
                bit_gap: next(100) as u16,
                max_registers: 125,
                max_bits: 2000,
            };
            check(&spans, &limits);
        }
    }

    #[test]
    fn a_rejected_request_splits_at_the_hole_then_to_single_points() {
        // Registers 10..20 do not exist on the device; the map bridges them.
        let spans = regs(&[(0, 2), (2, 2), (4, 2), (22, 2), (24, 2)]);
        let whole = check(
            &spans,
            &Limits {
                register_gap: 20,
                ..Limits::default()
            },
        );
        assert_eq!(whole.len(), 1);
        let Split::Halves(left, right) = split(&whole[0], &spans) else {
            panic!("two points or more split in halves")
        };
        assert_eq!((left.start, left.count, left.points.len()), (0, 6, 3));
        assert_eq!((right.start, right.count, right.points.len()), (22, 4, 2));
        // Without a gap it splits in the middle; a single point is unreadable.
        let Split::Halves(a, b) = split(&left, &spans) else {
            panic!("halves")
        };
        assert_eq!((a.points.len(), b.points.len()), (1, 2));
        assert_eq!(split(&a, &spans), Split::Unreadable(a.points[0]));
    }
}
