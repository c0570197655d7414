"""Edge filters in the manner of ESPHome's sensor filters: a metric's readings pass through small
steps, and only what survives is sent. Each step is a one-key map in the profile; the transforms
apply in their order, then the gates decide:

  offset x | multiply x | round n (decimals) | q x (round to a multiple of x; a binary step such as
  0.0625 keeps the CBOR float at half precision) | clamp [lo, hi] | median n | avg n  -- transforms
  delta d    -- drop unless the value changed, by at least d, from the last one sent (delta 0: any change)
  throttle s -- drop if the last send was less than s seconds ago
  heartbeat s -- the maximum interval: once s seconds have passed since the last send, the next reading
                 goes regardless of delta and throttle (its place in the list does not matter)

Level is a local pre-alarm threshold with hysteresis: {"above": x} or {"below": x}, optional "hyst",
or {"is": value} for a switch. A numeric level may add a local rate trigger, "fall": d with "fall_s": s:
a reading at least d below the highest of the last s seconds starts a fall (a burst main falls far
before it falls below any level). "hold_s": h keeps readings going at once for h seconds after the level
clears, so the gateway's rate rule sees the recovery within its window, not at the next routine batch.
Both are checked by app.config before they get here.
"""

class Filter:
    def __init__(self, steps):
        self.hb = None
        self.steps = []
        for s in steps:
            op, arg = next(iter(s.items()))
            if op == "heartbeat":
                self.hb = arg
            else:
                self.steps.append((op, arg, [] if op in ("median", "avg") else None))
        self.last = None
        self.sent_at = None

    def transform(self, v):
        """The reading after the transform steps, in their order (booleans pass unchanged)."""
        if isinstance(v, bool):
            return v
        for op, arg, win in self.steps:
            if op == "offset":
                v += arg
            elif op == "multiply":
                v *= arg
            elif op == "round":
                v = round(v, arg)
            elif op == "q":
                v = round(v / arg) * arg
            elif op == "clamp":
                v = arg[0] if v < arg[0] else arg[1] if v > arg[1] else v
            elif win is not None:
                win.append(v)
                if len(win) > arg:
                    win.pop(0)
                v = sorted(win)[(len(win) - 1) // 2] if op == "median" else sum(win) / len(win)
        return v

    def send(self, v, now, force=False):
        """Whether transformed value `v` at `now` (integer ms: exact where floats are single
        precision) goes out; the gates decide unless `force` or the heartbeat is due."""
        if self.sent_at is None or (self.hb is not None and now - self.sent_at >= self.hb * 1000):
            force = True
        if not force:
            for op, arg, _ in self.steps:
                if op == "delta" and (v == self.last or (not isinstance(v, bool) and abs(v - self.last) < arg)):
                    return False
                if op == "throttle" and now - self.sent_at < arg * 1000:
                    return False
        self.last = v
        self.sent_at = now
        return True


class Level:
    """Tracks one pre-alarm level; step() says whether a reading entered (1) or left (-1) the alarm."""

    def __init__(self, spec):
        self.spec = spec
        self.active = False
        self.falling = False
        self.until = None  # up_ms at which the hold after a clear ends
        self.top = []  # (ms, v) of the fall window that can still be its highest, highest first

    def fell(self, v, ms):
        """The reading (ms, v) a fall started from when `v` at `ms` starts one, else None; `falling` holds
        while readings stay `fall` below the highest of the window (the caller samples fast meanwhile)."""
        by = self.spec.get("fall")
        if by is None or isinstance(v, bool):
            return None
        w = self.top
        start = ms - int(self.spec["fall_s"] * 1000)
        while w and w[0][0] < start:
            w.pop(0)
        was = self.falling
        self.falling = bool(w) and w[0][1] - v >= by
        first = w[0] if self.falling and not was else None
        while w and w[-1][1] <= v:
            w.pop()
        if len(w) >= 32:  # bounded: a steady decline kept all of fall_s; the oldest goes, 32 samples back
            w.pop(0)
        w.append((ms, v))
        return first

    def holding(self, change, ms):
        """True while a reading taken at `ms` (after `change` from step) falls in the hold after a clear."""
        h = self.spec.get("hold_s")
        if h is None:
            return False
        if change < 0:
            self.until = ms + int(h * 1000)
        elif change > 0:
            self.until = None
        return self.until is not None and ms < self.until

    def step(self, v):
        s = self.spec
        h = s.get("hyst", 0)
        if "is" in s:
            on = v == s["is"]
        elif "above" in s:
            on = v >= s["above"] if not self.active else v > s["above"] - h
        else:
            on = v <= s["below"] if not self.active else v < s["below"] + h
        if on == self.active:
            return 0
        self.active = on
        return 1 if on else -1
