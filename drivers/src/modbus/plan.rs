//! Coalesced reads: the points of a poll group merged into as few Modbus
//! requests as the protocol allows (125 registers or 2000 bits per
//! request), bridging unused gaps up to a configured size; and what to do
//! when a device rejects a merged read with "illegal data address".
//!
//! Points are sorted by address and merged greedily: each request takes
//! the next point while the request's span stays within the limit, the
//! unused gap before the point stays within `max_gap`, and the request
//! spans no [`Break`]. For contiguous runs of sorted points this is the
//! minimum number of requests (the tests check it against an exhaustive
//! search).
//!
//! A rejected request is split in two and each half tried ([`Probe`]).
//! When both halves of a rejected request are answered, the unread range
//! between them must hold the hole: it becomes a [`Break`] no request may
//! span. A single point the device rejects is dropped, and its addresses
//! become a break too. Every rejection thus proves a new break, so after
//! each poll that learnt one the plan is made again from the points and
//! the breaks, and it settles on the fewest requests that avoid the
//! device's holes (only proven holes constrain it, and a request that
//! spans none is never rejected).

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

/// A range of addresses, `start..end` in an area, that no request may
/// span: it holds addresses the device rejects. An empty range (`start ==
/// end`) forbids a request holding both `start - 1` and `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Break {
    pub area: Area,
    pub start: u32,
    pub end: u32,
}

impl Break {
    /// Whether a request reading `start..end` of `area` spans this break.
    fn splits(&self, area: Area, start: u32, end: u32) -> bool {
        self.area == area && start < self.end && self.start < end
    }
}

/// The requests that read all `spans`, fewest first.
pub fn coalesce(spans: &[Span], limits: &Limits) -> Vec<ReadRequest> {
    plan(spans, 0..spans.len(), limits, &[])
}

/// The fewest requests that read the points `points` (indexes into
/// `spans`) without spanning any of `breaks`.
pub fn plan(
    spans: &[Span],
    points: impl IntoIterator<Item = usize>,
    limits: &Limits,
    breaks: &[Break],
) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = points.into_iter().collect();
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
            && !breaks
                .iter()
                .any(|b| b.splits(span.area, *start, (*end).max(span.end())))
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

/// One request of a poll: one of the plan's, or a half of a rejected one.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub request: std::borrow::Cow<'a, ReadRequest>,
    /// The rejected request this is a half of: (its node, which half).
    parent: Option<(usize, usize)>,
}

impl<'a> Attempt<'a> {
    /// A request of the plan.
    pub fn planned(request: &'a ReadRequest) -> Self {
        Self {
            request: std::borrow::Cow::Borrowed(request),
            parent: None,
        }
    }
}

/// What one poll learns from the device's rejections.
#[derive(Debug, Default)]
pub struct Probe {
    /// Per rejected request split in two: the range between its halves,
    /// and whether each half was answered.
    split: Vec<(Break, [bool; 2])>,
    /// Points the device rejects on their own.
    dropped: Vec<usize>,
    breaks: Vec<Break>,
}

impl Probe {
    /// The device answered `attempt`.
    pub fn answered(&mut self, attempt: &Attempt<'_>) {
        if let Some((node, half)) = attempt.parent {
            self.split[node].1[half] = true;
        }
    }

    /// The device rejected `attempt` with "illegal data address": the two
    /// halves to try instead (right half first, for a stack), or `None`
    /// when it read a single point, which is dropped.
    pub fn rejected(
        &mut self,
        attempt: &Attempt<'_>,
        spans: &[Span],
    ) -> Option<[Attempt<'static>; 2]> {
        let request = &attempt.request;
        match split(request, spans) {
            Split::Halves(left, right) => {
                let node = self.split.len();
                // Halves of points that share registers may overlap: then
                // nothing lies between them but their boundary.
                let left_end = u32::from(left.start) + u32::from(left.count);
                let between = Break {
                    area: request.area,
                    start: left_end.min(u32::from(right.start)),
                    end: u32::from(right.start),
                };
                self.split.push((between, [false; 2]));
                let half = |request, half| Attempt {
                    request: std::borrow::Cow::Owned(request),
                    parent: Some((node, half)),
                };
                Some([half(right, 1), half(left, 0)])
            }
            Split::Unreadable(p) => {
                if let Some(span) = spans.get(p) {
                    self.dropped.push(p);
                    self.breaks.push(Break {
                        area: span.area,
                        start: u32::from(span.address),
                        end: span.end(),
                    });
                }
                None
            }
        }
    }

    /// What was proven: the breaks between halves that were both answered
    /// (and around dropped points), and the dropped points.
    pub fn learnt(mut self) -> (Vec<Break>, Vec<usize>) {
        let proven = self.split.iter().filter(|(_, halves)| halves == &[true; 2]);
        self.breaks.extend(proven.map(|(between, _)| *between));
        (self.breaks, self.dropped)
    }
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
        minimum_around(spans, limits, &[])
    }

    /// The same, for requests that must not read any of `holes`.
    fn minimum_around(spans: &[Span], limits: &Limits, holes: &[(Area, u16)]) -> usize {
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
                let area = run[0].area;
                let reads_a_hole = holes
                    .iter()
                    .any(|&(a, h)| a == area && start <= u32::from(h) && u32::from(h) < end);
                if ok && end - start <= max_len && !reads_a_hole {
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

    /// A seeded xorshift draw in `0..n`: the same "random" maps every run.
    fn draws(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    #[test]
    fn random_maps_get_the_minimum_number_of_requests() {
        let mut next = draws(0x2545_F491_4F6C_DD1D);
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

    /// Polls a device that rejects every read of an address in `holes`
    /// until the plan settles (a poll without rejections): the settled
    /// plan, the points dropped, and how many polls it took.
    fn settle(
        spans: &[Span],
        limits: &Limits,
        holes: &[(Area, u16)],
    ) -> (Vec<ReadRequest>, Vec<usize>, usize) {
        let rejects = |r: &ReadRequest| {
            holes.iter().any(|&(a, h)| {
                a == r.area && r.start <= h && u32::from(h) < u32::from(r.start) + u32::from(r.count)
            })
        };
        let mut breaks = Vec::new();
        let mut dropped = Vec::new();
        for polls in 1..=2 * spans.len() + 2 {
            let live = (0..spans.len()).filter(|p| !dropped.contains(p));
            let plan = plan(spans, live, limits, &breaks);
            let mut probe = Probe::default();
            let mut rejected = false;
            for request in &plan {
                let mut attempts = vec![Attempt::planned(request)];
                while let Some(attempt) = attempts.pop() {
                    if rejects(&attempt.request) {
                        rejected = true;
                        attempts.extend(probe.rejected(&attempt, spans).into_iter().flatten());
                    } else {
                        probe.answered(&attempt);
                    }
                }
            }
            if !rejected {
                return (plan, dropped, polls);
            }
            let (learnt, lost) = probe.learnt();
            assert!(
                !learnt.is_empty() || !lost.is_empty(),
                "a poll with a rejection learnt nothing: {plan:?}"
            );
            breaks.extend(learnt);
            dropped.extend(lost);
        }
        panic!("the plan did not settle: {spans:?} holes {holes:?}");
    }

    #[test]
    fn after_a_rejection_the_plan_settles_on_the_minimum() {
        // The map of the issue: u16 points at 0, 2, ..., 12; 19, ..., 83,
        // 84; 88, ..., 94. Registers 85..=87 do not exist; 13..=18 do.
        let addresses: Vec<u16> = (0..13)
            .step_by(2)
            .chain((19..84).step_by(2))
            .chain([84])
            .chain((88..95).step_by(2))
            .collect();
        let spans = regs(&addresses.iter().map(|&a| (a, 1)).collect::<Vec<_>>());
        let limits = Limits::default();
        let first = coalesce(&spans, &limits);
        assert_eq!(first.len(), 1, "one read of 0..=94 at first");
        let holes: Vec<(Area, u16)> = (85..88).map(|a| (Area::HoldingRegister, a)).collect();
        let (settled, dropped, polls) = settle(&spans, &limits, &holes);
        let layout: Vec<(u16, u16)> = settled.iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(layout, [(0, 85), (88, 7)], "settled after {polls} polls");
        assert!(dropped.is_empty());
        assert_eq!(polls, 2, "the first poll proves the hole");
    }

    #[test]
    fn two_holes_are_each_proven_and_avoided() {
        let spans = regs(&[(0, 2), (4, 2), (10, 2), (14, 2), (20, 2)]);
        let limits = Limits::default();
        let holes = [(Area::HoldingRegister, 7), (Area::HoldingRegister, 17)];
        let (settled, dropped, _) = settle(&spans, &limits, &holes);
        let layout: Vec<(u16, u16)> = settled.iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(layout, [(0, 6), (10, 6), (20, 2)]);
        assert!(dropped.is_empty());
    }

    #[test]
    fn a_point_the_device_rejects_is_dropped_and_its_neighbours_still_merge_around_it() {
        let spans = regs(&[(0, 1), (1, 1), (2, 1), (3, 1)]);
        let (settled, dropped, _) =
            settle(&spans, &Limits::default(), &[(Area::HoldingRegister, 2)]);
        assert_eq!(dropped, [2]);
        let layout: Vec<(u16, u16)> = settled.iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(layout, [(0, 2), (3, 1)]);
    }

    #[test]
    fn random_maps_with_holes_settle_on_the_minimum_that_avoids_them() {
        let mut next = draws(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let areas = [Area::HoldingRegister, Area::InputRegister, Area::Coil];
            let mut spans: Vec<Span> = Vec::new();
            for _ in 0..(1 + next(25)) {
                let area = areas[next(3) as usize];
                let width = if area.is_bits() {
                    1
                } else {
                    [1, 2, 4][next(3) as usize] as u16
                };
                let address = next(300) as u16;
                let candidate = Span {
                    area,
                    address,
                    width,
                };
                // Points of a map never overlap (validation sees to it).
                let overlaps = spans.iter().any(|s| {
                    s.area == area && s.address < candidate.end() as u16 && address < s.end() as u16
                });
                if !overlaps {
                    spans.push(candidate);
                }
            }
            let holes: Vec<(Area, u16)> = (0..next(6))
                .map(|_| (areas[next(3) as usize], next(300) as u16))
                .collect();
            let limits = Limits {
                register_gap: next(20) as u16,
                bit_gap: next(100) as u16,
                max_registers: 125,
                max_bits: 2000,
            };
            let (settled, dropped, _) = settle(&spans, &limits, &holes);
            // The readable points, and the fewest requests that read them
            // and no hole.
            let readable: Vec<Span> = (0..spans.len())
                .filter(|p| !dropped.contains(p))
                .map(|p| spans[p])
                .collect();
            for &p in &dropped {
                let s = spans[p];
                assert!(
                    holes.iter().any(|&(a, h)| a == s.area
                        && s.address <= h
                        && u32::from(h) < s.end()),
                    "point {p} {s:?} was dropped but reads no hole {holes:?}"
                );
            }
            assert_eq!(
                settled.len(),
                minimum_around(&readable, &limits, &holes),
                "{spans:?} holes {holes:?} -> {settled:?}"
            );
            let mut served: Vec<usize> = settled.iter().flat_map(|r| r.points.clone()).collect();
            served.sort();
            let mut want: Vec<usize> = (0..spans.len()).filter(|p| !dropped.contains(p)).collect();
            want.sort();
            assert_eq!(served, want, "every readable point exactly once");
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
