"""Each device's best configuration in a table, for thousands of devices at once.

The score of configuration c for device d (see ``types.Weights``) is

    meets:    1 + q(c) - wl * lat(d, c) / slo - (wc + price) . slots(c)
    misses:   -(max(0, lat/slo - 1) + 10 * max(0, floor - q)) - [c uses shared capacity]

and ``lat(d, c) = base(c) + T(d, head(c))``: everything but the first hop is the same for every
device of a table, and the first hop depends only on the *head* of c (pattern, device cut, device
precision — they fix which link is used and how many bytes cross it). So configurations are grouped
by head; within a group the tails (where the rest runs, at which precisions) that meet the accuracy
floor are sorted by ``base`` with a running maximum of their device-independent score. A device's
best meeting tail in a group is then one binary search for its slack ``slo - T(d, head)``, and its
best configuration the best over groups — ``O(groups x log tails)`` per device instead of a scan of
every configuration. Devices for which nothing meets are scored exactly over every configuration
(``best_effort``), so the result always equals exhaustive enumeration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.planner.configs import NONE, B, ConfigTable, F, I
from controller.planner.types import Link, Pattern, Weights

#: Link classes of a head: which of the device's links its first hop uses.
NO_LINK, EDGE_LINK, CLOUD_LINK = 0, 1, 2
_TOLERANCE = 1e-9
MISS_ACCURACY_WEIGHT = 10.0
#: Cells (devices x configurations) scored at once by the dense scan.
_DENSE_CELLS = 1 << 20


@dataclass(frozen=True, slots=True, eq=False)
class Devices:
    """The devices of one table, as columns."""

    ids: tuple[str, ...]
    usable_bytes: F  # memory the model may use (after the headroom)
    fallback_bytes: F  # the fallback variant held beside a partitioned model (0: none)
    edge_rtt: F
    edge_ms_per_byte: F
    cloud_rtt: F
    cloud_ms_per_byte: F

    @staticmethod
    def of(
        ids: tuple[str, ...],
        usable: list[float],
        fallback: list[float],
        edge: list[Link | None],
        cloud: list[Link | None],
        percentile: float,
    ) -> Devices:
        def link_cols(links: list[Link | None]) -> tuple[F, F]:
            rtt = np.asarray([lk.rtt_at(percentile) if lk else np.inf for lk in links])
            # No link: an infinite round trip (never a NaN from inf * 0 on a row that sends nothing).
            per_byte = np.asarray([8.0 / (lk.bandwidth_mbps * 1000.0) if lk else 0.0 for lk in links])
            return rtt, per_byte

        er, eb = link_cols(edge)
        cr, cb = link_cols(cloud)
        return Devices(ids, np.asarray(usable), np.asarray(fallback), er, eb, cr, cb)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, at: I) -> Devices:
        """The devices at positions ``at``, in that order."""
        return Devices(
            tuple(self.ids[i] for i in at),
            self.usable_bytes[at],
            self.fallback_bytes[at],
            self.edge_rtt[at],
            self.edge_ms_per_byte[at],
            self.cloud_rtt[at],
            self.cloud_ms_per_byte[at],
        )


@dataclass(frozen=True, slots=True)
class Prices:
    """Lagrange prices (score per slot) of the table's edge and cloud pool."""

    edge: float = 0.0
    cloud: float = 0.0


class TableIndex:
    def __init__(self, table: ConfigTable, weights: Weights) -> None:
        self.table = table
        self.weights = weights
        d = table.deployment
        self.slo = d.slo_ms
        self.floor = d.min_quality
        pattern, a, pd = table.pattern, table.a, table.pd
        key = (pattern * (table.model.blocks + 1) + a) * (len(table.precisions) + 1) + (pd + 1)
        heads, first, self.row_group = np.unique(key, return_index=True, return_inverse=True)
        self.groups = len(heads)
        self.group_pattern = pattern[first]
        self.group_link = np.select(
            [
                np.isin(self.group_pattern, [int(Pattern.DEVICE_EDGE), int(Pattern.DEVICE_EDGE_CLOUD)]),
                self.group_pattern == int(Pattern.DEVICE_CLOUD),
            ],
            [EDGE_LINK, CLOUD_LINK],
            NO_LINK,
        )
        self.group_hop1 = table.hop1_bytes[first]
        self.group_local = self.group_pattern == int(Pattern.LOCAL)
        self.group_head_bytes = table.head_bytes[first]
        self.base = table.base_ms
        good = np.flatnonzero(table.quality >= self.floor - _TOLERANCE)
        order = np.lexsort((self.base[good], self.row_group[good]))
        self.sorted_rows: I = good[order]
        self.sorted_group: I = self.row_group[self.sorted_rows]
        self.sorted_base: F = self.base[self.sorted_rows]
        self.group_start = np.searchsorted(self.sorted_group, np.arange(self.groups), "left")
        self.group_stop = np.searchsorted(self.sorted_group, np.arange(self.groups), "right")
        # Keys that sort by group, then base: one searchsorted serves every (device, group) pair.
        span = float(np.max(self.sorted_base, initial=0.0)) + 1.0
        self._span = span
        self._keys = self.sorted_group * span + self.sorted_base
        #: The price-independent part of ``best_meeting`` (and the local rows' scores) for the last
        #: devices asked about: capacity allocation asks about the same devices at many prices.
        self._geometry: tuple[Devices, B, I, F] | None = None
        self._local: tuple[Devices, I, F] | None = None

    # --- scores -----------------------------------------------------------------------------------

    def device_independent(self, rows: I, prices: Prices) -> F:
        """``1 + q - wl * base / slo - (wc + price) . slots`` of configurations ``rows``."""
        t, w = self.table, self.weights
        return (
            1.0
            + t.quality[rows]
            - w.latency_weight * self.base[rows] / self.slo
            - (w.capacity_weight + prices.edge) * t.edge_slots[rows]
            - (w.capacity_weight + prices.cloud) * t.cloud_slots[rows]
        )

    def link_ms(self, devices: Devices, dev: I, groups: I) -> F:
        """The first hop's time for each (device, head group) pair."""
        link = self.group_link[groups]
        hop = self.group_hop1[groups]
        edge = devices.edge_rtt[dev] + hop * devices.edge_ms_per_byte[dev]
        cloud = devices.cloud_rtt[dev] + hop * devices.cloud_ms_per_byte[dev]
        return np.where(link == EDGE_LINK, edge, np.where(link == CLOUD_LINK, cloud, 0.0))

    def fits(self, devices: Devices, dev: I, groups: I) -> B:
        """Whether the head fits the device's memory (with the fallback beside a partitioned one)."""
        need = self.group_head_bytes[groups] + np.where(
            self.group_local[groups], 0.0, devices.fallback_bytes[dev]
        )
        return np.asarray(need <= devices.usable_bytes[dev])

    def latency(self, devices: Devices, dev: I, rows: I) -> F:
        return self.base[rows] + self.link_ms(devices, dev, self.row_group[rows])

    def score(self, devices: Devices, dev: I, rows: I, prices: Prices) -> F:
        """The exact score of configuration ``rows[i]`` for device ``dev[i]`` (-inf: it may not run it)."""
        t = self.table
        groups = self.row_group[rows]
        lat = self.base[rows] + self.link_ms(devices, dev, groups)
        q = t.quality[rows]
        meets = (lat <= self.slo + _TOLERANCE) & (q >= self.floor - _TOLERANCE)
        ok = (
            self.device_independent(rows, prices)
            - self.weights.latency_weight * (lat - self.base[rows]) / self.slo
        )
        shared = t.pattern[rows] != int(Pattern.LOCAL)
        # A device that misses anyway still pays for the capacity it would take, so that under prices
        # it does not crowd out devices that capacity would make meet.
        miss = (
            -(np.maximum(0.0, lat / self.slo - 1.0) + MISS_ACCURACY_WEIGHT * np.maximum(0.0, self.floor - q))
            - shared.astype(np.float64)
            - prices.edge * t.edge_slots[rows]
            - prices.cloud * t.cloud_slots[rows]
        )
        valid = self.fits(devices, dev, groups) & np.isfinite(lat)
        return np.where(valid, np.where(meets, ok, miss), -np.inf)

    # --- search -----------------------------------------------------------------------------------

    def _where(self, devices: Devices) -> tuple[B, I, F]:
        """Per (device, group), device-major: whether some tail of the group meets for the device,
        the position in the sorted rows of the slowest tail that does, and the first hop's share of
        the score (``wl * link / slo``). Cached for the last ``devices``."""
        cached = self._geometry
        if cached is not None and cached[0] is devices:
            return cached[1], cached[2], cached[3]
        n = len(devices)
        dev = np.repeat(np.arange(n), self.groups)
        grp = np.tile(np.arange(self.groups), n)
        link = self.link_ms(devices, dev, grp)
        slack = self.slo + _TOLERANCE - link
        ok = self.fits(devices, dev, grp) & np.isfinite(link) & (slack >= 0.0)
        pos = (
            np.searchsorted(self._keys, grp * self._span + np.minimum(slack, self._span - 1e-6), "right") - 1
        )
        ok &= (pos >= self.group_start[grp]) & (pos < self.group_stop[grp])
        pos = np.where(ok, pos, 0)
        link_term = np.where(ok, self.weights.latency_weight * link / self.slo, 0.0)
        self._geometry = (devices, ok, pos, link_term)
        return ok, pos, link_term

    def best_meeting(self, devices: Devices, prices: Prices) -> tuple[I, F]:
        """Per device: its best configuration that meets the SLO and the floor, and its score;
        row -1 and score -inf where none does."""
        n = len(devices)
        best_row = np.full(n, NONE, dtype=np.int64)
        best_score = np.full(n, -np.inf)
        if n == 0 or len(self.sorted_rows) == 0:
            return best_row, best_score
        const = self.device_independent(self.sorted_rows, prices)
        run_value, run_row = _running_max(const, self.sorted_group, self.groups)
        ok, pos, link_term = self._where(devices)
        value = np.where(ok, run_value[pos] - link_term, -np.inf)
        per_device = value.reshape(n, self.groups)
        pick = np.argmax(per_device, axis=1)
        at = np.arange(n) * self.groups + pick
        best_score = value[at]
        best_row = np.where(np.isfinite(best_score), self.sorted_rows[run_row[pos[at]]], NONE)
        return best_row, best_score

    def local_best(self, devices: Devices) -> tuple[I, F]:
        """Per device, its best local row and that row's score (local rows take no shared capacity,
        so no price changes it); cached for the last ``devices``."""
        cached = self._local
        if cached is not None and cached[0] is devices:
            return cached[1], cached[2]
        local = np.flatnonzero(self.table.pattern == int(Pattern.LOCAL))
        n, k = len(devices), len(local)
        if not k:
            rows, scores = np.full(n, NONE, dtype=np.int64), np.full(n, -np.inf)
        else:
            s = self.score(devices, np.repeat(np.arange(n), k), np.tile(local, n), Prices()).reshape(n, k)
            pick = np.argmax(s, axis=1)
            rows, scores = local[pick], s[np.arange(n), pick]
        self._local = (devices, rows, scores)
        return rows, scores

    def best_effort(self, devices: Devices, dev: I, prices: Prices) -> tuple[I, F]:
        """Per device in ``dev``: its best configuration over *every* row (exact, dense), for devices
        that nothing meets. Scored in chunks, so memory stays bounded on a large table."""
        size = self.table.size
        out_rows = np.full(len(dev), NONE, dtype=np.int64)
        out_score = np.full(len(dev), -np.inf)
        if size == 0:  # nothing the deployment allows runs on this class
            return out_rows, out_score
        chunk = max(1, _DENSE_CELLS // max(size, 1))
        for lo in range(0, len(dev), chunk):
            part = dev[lo : lo + chunk]
            k = len(part)
            scores = self.score(devices, np.repeat(part, size), np.tile(np.arange(size), k), prices).reshape(
                k, size
            )
            pick = np.argmax(scores, axis=1)
            best = scores[np.arange(k), pick]
            found = np.isfinite(best)
            out_rows[lo : lo + k] = np.where(found, pick, NONE)
            out_score[lo : lo + k] = best
        return out_rows, out_score

    def best(self, devices: Devices, prices: Prices, effort: I | None = None) -> tuple[I, F]:
        """Per device, its best row at these prices. Without prices a row that meets both
        objectives always outscores one that does not, so the meeting search decides and only
        devices nothing meets are scanned in full. With prices a local row that misses can beat a
        meeting one that is priced out, so the local rows (a handful) are always scored too.

        ``effort``: each device's best row at zero prices (from an earlier call), which saves the
        full scan of devices nothing meets: under prices their choice is that row, now priced, or
        a local one."""
        rows, scores = self.best_meeting(devices, prices)
        priced = bool(prices.edge or prices.cloud)
        if priced:
            local_row, local_score = self.local_best(devices)
            better = local_score > scores
            rows[better], scores[better] = local_row[better], local_score[better]
        missing = np.flatnonzero(~np.isfinite(scores))
        if effort is not None and len(missing):
            known = missing[effort[missing] != NONE] if not priced else np.flatnonzero(effort != NONE)
            if len(known):
                again = self.score(devices, known, effort[known], prices)
                better = again > scores[known]
                rows[known[better]], scores[known[better]] = effort[known[better]], again[better]
            missing = np.flatnonzero(~np.isfinite(scores))
        if len(missing):
            r, s_ = self.best_effort(devices, missing, prices)
            rows[missing], scores[missing] = r, s_
        return rows, scores


def _running_max(values: F, groups: I, ngroups: int) -> tuple[F, I]:
    """Within each run of equal ``groups`` (sorted), the running maximum of ``values`` and the
    position where it was reached (ties keep the earlier, i.e. faster, configuration)."""
    lo = float(np.min(values, initial=0.0))
    hi = float(np.max(values, initial=0.0))
    offset = (hi - lo) + 1.0
    shifted = (values - lo) + groups * offset  # later groups are always larger: runs never mix
    running = np.maximum.accumulate(shifted)
    at = np.arange(len(values))
    is_new = shifted > np.concatenate(([-np.inf], running[:-1]))
    where = np.maximum.accumulate(np.where(is_new, at, 0))
    return running - groups * offset + lo, where
