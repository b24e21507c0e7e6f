"""Summarise a Chrome trace written by `log.trace_step` (libtorch's operator profile): self time per
operator (its time minus that of the operators it called), largest first.

usage: trace_ops.py TRACE.json [--top N]
"""
import argparse
import collections
import json


def main():
    p = argparse.ArgumentParser()
    p.add_argument("trace")
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    events = [e for e in json.load(open(a.trace))["traceEvents"]
              if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    self_us = collections.Counter()
    calls = collections.Counter()
    total = 0.0
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [event, time of its children]
        def close(upto):
            while stack and stack[-1][0]["ts"] + stack[-1][0]["dur"] <= upto:
                ev, child = stack.pop()
                self_us[ev["name"]] += ev["dur"] - child
                if stack:
                    stack[-1][1] += ev["dur"]
        for e in evs:
            close(e["ts"])
            if not stack:
                total += e["dur"]
            calls[e["name"]] += 1
            stack.append([e, 0.0])
        close(float("inf"))
    print(f"operators' total: {total / 1e3:.1f} ms in {sum(calls.values())} calls")
    print(f"{'self ms':>8} {'share':>6} {'calls':>6}  operator")
    for name, us in self_us.most_common(a.top):
        print(f"{us / 1e3:8.2f} {us / total:6.1%} {calls[name]:6d}  {name}")


if __name__ == "__main__":
    main()
