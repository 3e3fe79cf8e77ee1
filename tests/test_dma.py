# amaranth: UnusedElaboratable=no
# (the bad-parameter tests build DmaBursters whose __init__ raises; amaranth would warn "unused")
"""DmaBurster in amaranth.sim: window check and 4 KiB burst splitting against the Python models."""

import random

import pytest
from amaranth.hdl import Cat
from amaranth.sim import Simulator

from jacquard.rtl.dma import DmaBurster, check_command, plan_bursts
from jacquard.rtl.dma_reader import DmaReader
from jacquard.rtl.dma_writer import DmaWriter
from jacquard.sim.isa import ErrorCode
from jacquard.sim.streams import stream_monitor, stream_put, stream_recv, stream_send

BASE, LIMIT = 0x1000_0000, 0x1010_0000


def random_command(rng: random.Random, data_bytes: int, tag: int, bad: bool = False) -> dict:
    """A random tile inside [BASE, LIMIT), or (``bad``) one that straddles an edge or is malformed."""
    inner = data_bytes * rng.choice([1, 2, 3, 7, 16, 17, 33, 64, 200])
    count1, count2 = rng.randint(1, 4), rng.choice([1, 1, 2, 3])
    stride1 = inner + data_bytes * rng.randint(0, 40)
    stride2 = stride1 * count1 + data_bytes * rng.randint(0, 40)
    span = (count2 - 1) * stride2 + (count1 - 1) * stride1 + inner
    # Start near a 4 KiB boundary half of the time, so that splitting is exercised.
    if rng.random() < 0.5:
        addr = BASE + 4096 * rng.randint(1, 200) - data_bytes * rng.randint(1, 20)
    else:
        addr = BASE + data_bytes * rng.randint(0, (LIMIT - BASE - span) // data_bytes)
    cmd = dict(addr=addr, inner_bytes=inner, count1=count1, stride1=stride1, count2=count2,
               stride2=stride2, tag=tag)
    if bad:
        kind = rng.choice(["below", "straddle_limit", "past", "align", "zero"])
        if kind == "below":
            cmd["addr"] = BASE - data_bytes * rng.randint(1, 4)
        elif kind == "straddle_limit":  # the last row's last beat is the only byte outside
            cmd["addr"] = LIMIT - span + data_bytes
        elif kind == "past":
            cmd["addr"] = LIMIT
        elif kind == "align":
            cmd["stride1"] += 4 if data_bytes > 4 else 2
        else:
            cmd[rng.choice(["inner_bytes", "count1", "count2"])] = 0
    return cmd


def model(cmd: dict, data_bytes: int) -> ErrorCode:
    return check_command(**{k: v for k, v in cmd.items() if k != "tag"}, window_base=BASE,
                         window_limit=LIMIT, data_bytes=data_bytes)


def run_burster(cmds: list[dict], *, data_width=64, max_burst=16, seed=1, gap=0.3):
    """Feed ``cmds``; return (bursts as (addr, beats, last, tag), errors as (code, tag))."""
    dut = DmaBurster(data_width=data_width, max_burst=max_burst)
    db = data_width // 8
    want_bursts = sum(len(plan_bursts(**{k: v for k, v in c.items() if k != "tag"}, data_bytes=db,
                                      max_burst=max_burst)) for c in cmds if model(c, db) == ErrorCode.NONE)
    rng = random.Random(seed)
    errors, got = [], []

    async def sender(ctx):
        ctx.set(dut.window_base, BASE)
        ctx.set(dut.window_limit, LIMIT)
        for c in cmds:
            while rng.random() < gap:
                await ctx.tick()
            await stream_put(ctx, dut.cmd, c)
            if model(c, db) != ErrorCode.NONE:
                await ctx.tick().until(dut.error)
                errors.append((ErrorCode(ctx.get(dut.error_code)), ctx.get(dut.error_tag)))
                ctx.set(dut.clear, 1)
                await ctx.tick()
                ctx.set(dut.clear, 0)

    async def receiver(ctx):
        for p in await stream_recv(ctx, dut.burst, want_bursts, rng=random.Random(seed + 1), gap=gap):
            got.append((p.addr, p.len + 1, p.last, p.tag))
        await ctx.tick().repeat(40)
        assert not ctx.get(dut.burst.valid), "a burst beyond the expected ones"
        assert not ctx.get(dut.busy)

    async def monitor(ctx):
        await stream_monitor(ctx, dut.burst, "burst")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(sender)
    sim.add_testbench(receiver)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return got, errors


def expected(cmds: list[dict], data_bytes: int, max_burst: int):
    bursts, errors = [], []
    for c in cmds:
        code = model(c, data_bytes)
        if code != ErrorCode.NONE:
            errors.append((code, c["tag"]))
            continue
        plan = plan_bursts(**{k: v for k, v in c.items() if k != "tag"}, data_bytes=data_bytes,
                           max_burst=max_burst)
        bursts += [(a, n, int(i == len(plan) - 1), c["tag"]) for i, (a, n) in enumerate(plan)]
    return bursts, errors


def compare(got, want, seed, what):
    for i, (g, w) in enumerate(zip(got, want, strict=False)):  # lengths checked below
        assert g == w, f"seed={seed}: {what} {i}: expected {w}, got {g}"
    assert len(got) == len(want), f"seed={seed}: {len(got)} {what}s, expected {len(want)}"


def test_plan_bursts_never_cross_4k():
    rng = random.Random(3)
    for _ in range(300):
        c = random_command(rng, 8, 0)
        plan = plan_bursts(**{k: v for k, v in c.items() if k != "tag"}, data_bytes=8, max_burst=16)
        assert sum(n for _, n in plan) == c["count1"] * c["count2"] * c["inner_bytes"] // 8
        for a, n in plan:
            assert 1 <= n <= 16 and a // 4096 == (a + 8 * n - 1) // 4096, (c, a, n)


@pytest.mark.parametrize("data_width,max_burst,seed", [(64, 16, 1), (32, 16, 2), (128, 8, 3), (64, 256, 4),
                                                       (128, 256, 5), (32, 1, 6), (64, 2, 7)])
def test_burster_random(data_width, max_burst, seed):
    rng = random.Random(seed)
    db = data_width // 8
    cmds = [random_command(rng, db, t, bad=rng.random() < 0.25) for t in range(24)]
    got, errors = run_burster(cmds, data_width=data_width, max_burst=max_burst, seed=seed)
    want_bursts, want_errors = expected(cmds, db, max_burst)
    compare(got, want_bursts, seed, "burst")
    compare(errors, want_errors, seed, "error")


def test_burster_4k_edge():
    # 24 beats starting 3 beats below a 4 KiB boundary: 3, then 16, then 5.
    cmd = dict(addr=BASE + 4096 - 24, inner_bytes=24 * 8, count1=1, stride1=0, count2=1, stride2=0, tag=5)
    got, errors = run_burster([cmd], gap=0.0)
    assert errors == []
    assert got == [(BASE + 4096 - 24, 3, 0, 5), (BASE + 4096, 16, 0, 5), (BASE + 4096 + 128, 5, 1, 5)]


@pytest.mark.parametrize("data_width,max_burst,seed",
                         [(64, 16, 11), (32, 2, 12), (128, 256, 13), (64, 256, 14), (64, 4, 15)])
def test_burster_rows_near_4k(data_width, max_burst, seed):
    # Rows of 1..3 bursts' worth of beats starting a few beats below a 4 KiB boundary or a few
    # bursts before it, 1..3 rows, so that the limits after one and after two full bursts (which
    # the generator computes ahead) meet every boundary case.
    rng = random.Random(seed)
    db = data_width // 8
    cmds = []
    for t in range(40):
        inner = db * rng.randint(1, 3 * max_burst + 2)
        near = 4096 - db * (rng.randint(0, 2) * max_burst + rng.randint(0, max_burst))
        stride1 = inner + db * rng.choice([0, 1, max_burst, 4096 // db - 1])
        count1 = rng.randint(1, 3)
        cmds.append(dict(addr=BASE + 4096 * rng.randint(1, 100) + near % 4096, inner_bytes=inner,
                         count1=count1, stride1=stride1, count2=rng.choice([1, 2]),
                         stride2=stride1 * count1 + db * rng.randint(0, 3), tag=t))
    got, errors = run_burster(cmds, data_width=data_width, max_burst=max_burst, seed=seed)
    want_bursts, want_errors = expected(cmds, db, max_burst)
    compare(got, want_bursts, seed, "burst")
    compare(errors, want_errors, seed, "error")


def test_burster_one_burst_per_cycle():
    # One-beat rows and an always-ready consumer: a burst every cycle from the first on.
    dut = DmaBurster()
    n = 12
    cycles = []

    async def tb(ctx):
        ctx.set(dut.window_base, BASE)
        ctx.set(dut.window_limit, LIMIT)
        ctx.set(dut.burst.ready, 1)
        await stream_put(ctx, dut.cmd, dict(addr=BASE, inner_bytes=8, count1=4, stride1=8, count2=3,
                                            stride2=64, tag=1))
        cycle = 0
        while len(cycles) < n:
            _, _, valid = await ctx.tick().sample(dut.burst.valid)
            cycle += 1
            if valid:
                cycles.append(cycle)
                assert cycle < 100, "bursts stopped"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert cycles == list(range(cycles[0], cycles[0] + n)), f"bursts at cycles {cycles}"


@pytest.mark.parametrize("addr,inner,code", [
    (LIMIT - 64, 64, ErrorCode.NONE),          # ends exactly at the (exclusive) limit
    (LIMIT - 56, 64, ErrorCode.WINDOW),        # one beat past the limit
    (BASE - 8, 64, ErrorCode.WINDOW),          # one beat below the base
    (BASE, 0, ErrorCode.PARAM_RANGE),
    (BASE + 4, 64, ErrorCode.MISALIGNED),
])
def test_burster_window_edges(addr, inner, code):
    cmd = dict(addr=addr, inner_bytes=inner, count1=1, stride1=0, count2=1, stride2=0, tag=9)
    got, errors = run_burster([cmd], gap=0.0)
    assert errors == ([] if code == ErrorCode.NONE else [(code, 9)])
    assert (got != []) == (code == ErrorCode.NONE)


def test_burster_huge_strides_do_not_wrap():
    # (count1 - 1) * stride1 wraps 32 bits back into the window; the exact end must refuse it.
    cmd = dict(addr=BASE, inner_bytes=8, count1=3, stride1=0x8000_0000, count2=1, stride2=0, tag=1)
    assert model(cmd, 8) == ErrorCode.WINDOW
    got, errors = run_burster([cmd], gap=0.0)
    assert got == [] and errors == [(ErrorCode.WINDOW, 1)]


def test_burster_abort_keeps_offered_burst():
    dut = DmaBurster()

    async def tb(ctx):
        ctx.set(dut.window_base, BASE)
        ctx.set(dut.window_limit, LIMIT)
        await stream_put(ctx, dut.cmd, dict(addr=BASE, inner_bytes=4096, count1=4, stride1=4096,
                                            count2=1, stride2=0, tag=2))
        await ctx.tick().until(dut.burst.valid)
        addr = ctx.get(dut.burst.payload.addr)
        ctx.set(dut.abort, 1)
        await ctx.tick()
        ctx.set(dut.abort, 0)
        # The offered burst stays until taken; then nothing else comes and the burster is idle.
        assert ctx.get(dut.burst.valid) and ctx.get(dut.burst.payload.addr) == addr
        ctx.set(dut.burst.ready, 1)
        await ctx.tick()
        ctx.set(dut.burst.ready, 0)
        for _ in range(10):
            assert not ctx.get(dut.burst.valid)
            await ctx.tick()
        assert not ctx.get(dut.busy) and not ctx.get(dut.error)
        # Reusable at once.
        await stream_put(ctx, dut.cmd, dict(addr=BASE + 64, inner_bytes=8, count1=1, stride1=0,
                                            count2=1, stride2=0, tag=3))
        await ctx.tick().until(dut.burst.valid)
        assert ctx.get(dut.burst.payload.addr) == BASE + 64 and ctx.get(dut.burst.payload.last)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("kwargs", [dict(data_width=48), dict(max_burst=12), dict(max_burst=512),
                                    dict(data_width=128, max_burst=512), dict(addr_width=8),
                                    dict(tag_width=0)])
def test_burster_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        DmaBurster(**kwargs)


# -- DmaReader and DmaWriter in amaranth.sim, with a small Python AXI slave --------------------------

class _Channel:
    """An AXI channel seen as a stream, so that stream_monitor checks its handshake too."""

    def __init__(self, valid, ready, *payload):
        self.valid, self.ready, self.payload = valid, ready, Cat(*payload)


def _addresses(c: dict, nbytes: int) -> list[int]:
    return [c["addr"] + i2 * c["stride2"] + i1 * c["stride1"] + k
            for i2 in range(c["count2"]) for i1 in range(c["count1"])
            for k in range(0, c["inner_bytes"], nbytes)]


def _run_with_slave(dut, mem: dict, seed: int, testbenches, monitored, gap: float = 0.3):
    """Simulate ``dut`` against a Python AXI slave serving ``mem`` (address -> word) with random gaps.

    The slave takes addresses at any time (a queue, so bursts are outstanding) and answers one
    burst at a time, in order. Every AXI channel and each ``monitored`` stream is protocol-checked.
    """
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    axi = dut.m_axi
    nbytes = len(axi.rdata if hasattr(axi, "rdata") else axi.wdata) // 8
    rng = random.Random(seed + 10)
    queue = []

    if hasattr(axi, "arvalid"):
        valid, ready, addr, length = axi.arvalid, axi.arready, axi.araddr, axi.arlen
        chans = [(_Channel(axi.arvalid, axi.arready, axi.araddr, axi.arlen), "ar"),
                 (_Channel(axi.rvalid, axi.rready, axi.rdata, axi.rlast), "r")]

        async def data_channel(ctx):
            while True:
                if not queue:
                    await ctx.tick()
                    continue
                a, n = queue.pop(0)
                for k in range(n):
                    while rng.random() < gap:
                        await ctx.tick()
                    ctx.set(axi.rdata, mem.get(a + k * nbytes, 0))
                    ctx.set(axi.rlast, k == n - 1)
                    ctx.set(axi.rvalid, 1)
                    await ctx.tick().until(axi.rready)
                    ctx.set(axi.rvalid, 0)
    else:
        valid, ready, addr, length = axi.awvalid, axi.awready, axi.awaddr, axi.awlen
        chans = [(_Channel(axi.awvalid, axi.awready, axi.awaddr, axi.awlen), "aw"),
                 (_Channel(axi.wvalid, axi.wready, axi.wdata, axi.wstrb, axi.wlast), "w")]

        async def data_channel(ctx):
            while True:
                if not queue:
                    await ctx.tick()
                    continue
                a, n = queue.pop(0)
                for k in range(n):
                    took = False
                    while not took:
                        r = rng.random() >= gap
                        ctx.set(axi.wready, r)
                        _, _, v, d, strb, last = await ctx.tick().sample(axi.wvalid, axi.wdata, axi.wstrb,
                                                                         axi.wlast)
                        took = r and v
                    assert last == (k == n - 1), f"wlast {last} on beat {k} of {n}"
                    if strb:
                        assert strb == (1 << nbytes) - 1
                        mem[a + k * nbytes] = d
                ctx.set(axi.wready, 0)
                ctx.set(axi.bvalid, 1)
                await ctx.tick().until(axi.bready)
                ctx.set(axi.bvalid, 0)

    async def address_channel(ctx):
        ctx.set(ready, 1)
        async for _, _, v, r, a, n in ctx.tick().sample(valid, ready, addr, length):
            if r and v:
                queue.append((a, n + 1))
            ctx.set(ready, rng.random() >= gap)

    sim.add_process(address_channel)
    sim.add_process(data_channel)
    for tb in testbenches:
        sim.add_testbench(tb)
    for port, name in monitored + chans:
        async def mon(ctx, port=port, name=name):
            await stream_monitor(ctx, port, name)
        sim.add_testbench(mon, background=True)
    sim.run()


async def _send_cmds(ctx, port, cmds, rng):
    for c in cmds:
        while rng.random() < 0.3:
            await ctx.tick()
        await stream_put(ctx, port, c)


@pytest.mark.parametrize("seed", [1, 2])
def test_reader_amaranth(seed):
    rng = random.Random(seed)
    dut = DmaReader(max_outstanding=2)
    cmds = [random_command(rng, 8, t) for t in range(6)]
    mem = {a: rng.getrandbits(64) for c in cmds for a in _addresses(c, 8)}
    want = []
    for c in cmds:
        addrs = _addresses(c, 8)
        want += [(mem[a], int(k == len(addrs) - 1)) for k, a in enumerate(addrs)]
    got = []

    async def commands(ctx):
        ctx.set(dut.window_base, BASE)
        ctx.set(dut.window_limit, LIMIT)
        await _send_cmds(ctx, dut.cmd, cmds, rng)

    async def words(ctx):
        got.extend((p.data, p.last) for p in await stream_recv(ctx, dut.o, len(want),
                                                                rng=random.Random(seed + 2), gap=0.3))

    _run_with_slave(dut, mem, seed, [commands, words], [(dut.o, "o")])
    compare(got, want, seed, "read word")


@pytest.mark.parametrize("seed", [1, 2])
def test_writer_amaranth(seed):
    rng = random.Random(seed)
    dut = DmaWriter(max_outstanding=2)
    cmds = [random_command(rng, 8, t) for t in range(6)]
    addrs = [a for c in cmds for a in _addresses(c, 8)]
    words = [rng.getrandbits(64) for _ in addrs]
    mem, done = {}, []

    async def commands(ctx):
        ctx.set(dut.window_base, BASE)
        ctx.set(dut.window_limit, LIMIT)
        await _send_cmds(ctx, dut.cmd, cmds, rng)

    async def data_in(ctx):
        await stream_send(ctx, dut.i, words, rng=random.Random(seed + 3), gap=0.3)

    async def completions(ctx):
        done.extend(p.tag for p in await stream_recv(ctx, dut.done, len(cmds), rng=random.Random(seed + 4),
                                                     gap=0.3))
        assert not ctx.get(dut.busy)

    _run_with_slave(dut, mem, seed, [commands, data_in, completions], [(dut.done, "done")])
    assert done == [c["tag"] for c in cmds], f"seed={seed}: done tags {done}"
    model = dict(zip(addrs, words, strict=True))  # later writes to one address win, as in memory
    assert mem == model, f"seed={seed}: written memory differs from the model"
