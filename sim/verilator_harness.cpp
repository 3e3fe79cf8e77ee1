// A C++ test harness for JacquardCore in Verilator, with no Python in the simulation loop.
//
// The core's AXI4 master talks to a C++ memory (a byte array, one beat per cycle, several bursts
// in flight); a C++ AXI4-Lite host runs a script read from stdin, one command per line:
//
//   load PATH          copy PATH's bytes to memory address 0 (the memory size is argv[1])
//   reset N            hold rst for N cycles
//   write OFFSET VALUE AXI4-Lite write (decimal or 0x.. numbers)
//   read OFFSET        AXI4-Lite read; prints "read OFFSET VALUE"
//   wait OFFSET MASK EVERY TIMEOUT
//                      poll OFFSET every EVERY cycles until (value & MASK) == 0; prints
//                      "wait CYCLES SECONDS" (simulated cycles and wall time of the wait)
//   dump PATH          write the whole memory to PATH
//
// Used by jacquard.sim.verilator_harness to measure the model's own speed (and as a fast path for
// whole-network runs); the model is compiled by Verilator with this file as its main.

#include "Vtop.h"
#include "verilated.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

// Amaranth names the ports s_axil__awvalid; Verilator encodes the double underscore as ___05F.
#define P(name) top->name

namespace {

struct Burst {
    uint32_t addr;
    unsigned beats;
};

class Harness {
public:
    Harness(size_t mem_size, VerilatedContext* ctx) : mem_(mem_size, 0), top(new Vtop{ctx}) {
        top->clk = 0;
        top->rst = 1;
        top->eval();
    }
    ~Harness() { top->final(); }

    void load(const std::string& path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw std::runtime_error("cannot open " + path);
        std::vector<char> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        if (raw.size() > mem_.size()) throw std::runtime_error(path + " is larger than the memory");
        std::copy(raw.begin(), raw.end(), mem_.begin());
    }

    void dump(const std::string& path) {
        std::ofstream f(path, std::ios::binary);
        f.write(reinterpret_cast<const char*>(mem_.data()), static_cast<std::streamsize>(mem_.size()));
    }

    void reset(unsigned n) {
        top->rst = 1;
        for (unsigned i = 0; i < n; i++) tick();
        top->rst = 0;
        tick();
    }

    void write(uint32_t off, uint32_t value) {
        P(s_axil___05Fawaddr) = off;
        P(s_axil___05Fwdata) = value;
        P(s_axil___05Fwstrb) = 0xF;
        P(s_axil___05Fawvalid) = 1;
        P(s_axil___05Fwvalid) = 1;
        P(s_axil___05Fbready) = 1;
        bool aw = false, w = false, b = false;
        while (!b) {
            settle();
            bool aw_fire = P(s_axil___05Fawvalid) && P(s_axil___05Fawready);
            bool w_fire = P(s_axil___05Fwvalid) && P(s_axil___05Fwready);
            bool b_fire = P(s_axil___05Fbvalid) && P(s_axil___05Fbready);
            edge();
            aw |= aw_fire;
            w |= w_fire;
            b |= b_fire;
            if (aw) P(s_axil___05Fawvalid) = 0;
            if (w) P(s_axil___05Fwvalid) = 0;
        }
        P(s_axil___05Fbready) = 0;
    }

    uint32_t read(uint32_t off) {
        P(s_axil___05Faraddr) = off;
        P(s_axil___05Farvalid) = 1;
        P(s_axil___05Frready) = 1;
        uint32_t value = 0;
        for (bool done = false; !done;) {
            settle();
            bool ar_fire = P(s_axil___05Farvalid) && P(s_axil___05Farready);
            bool r_fire = P(s_axil___05Frvalid) && P(s_axil___05Frready);
            if (r_fire) value = P(s_axil___05Frdata);
            edge();
            if (ar_fire) P(s_axil___05Farvalid) = 0;
            done = r_fire;
        }
        P(s_axil___05Frready) = 0;
        return value;
    }

    void idle(uint64_t n) {
        for (uint64_t i = 0; i < n; i++) tick();
    }

    uint64_t cycles() const { return cycles_; }

private:
    // Inputs are set after a rising edge; settle() evaluates the combinational logic with them so that
    // the handshakes of the next edge can be sampled, edge() clocks the design.
    void settle() {
        top->clk = 0;
        top->eval();
    }

    void edge() {
        bool ar = P(m_axi___05Farvalid) && P(m_axi___05Farready);
        bool r = P(m_axi___05Frvalid) && P(m_axi___05Frready);
        bool aw = P(m_axi___05Fawvalid) && P(m_axi___05Fawready);
        bool w = P(m_axi___05Fwvalid) && P(m_axi___05Fwready);
        bool b = P(m_axi___05Fbvalid) && P(m_axi___05Fbready);
        Burst ar_b{P(m_axi___05Faraddr), P(m_axi___05Farlen) + 1u};
        Burst aw_b{P(m_axi___05Fawaddr), P(m_axi___05Fawlen) + 1u};
        uint32_t wdata = P(m_axi___05Fwdata);
        unsigned wstrb = P(m_axi___05Fwstrb);
        top->clk = 1;
        top->eval();
        cycles_++;
        if (ar) reads_.push_back(ar_b);
        if (aw) writes_.push_back(aw_b);
        if (r) {
            Burst& head = reads_.front();
            head.addr += 4;
            if (--head.beats == 0) reads_.pop_front();
        }
        if (w) {
            Burst& head = writes_.front();
            for (unsigned k = 0; k < 4; k++)
                if (wstrb >> k & 1) poke(head.addr + k, wdata >> (8 * k));
            head.addr += 4;
            if (--head.beats == 0) {
                writes_.pop_front();
                pending_b_++;
            }
        }
        if (b) pending_b_--;
        drive();
    }

    void tick() {
        settle();
        edge();
    }

    // The memory's outputs for the next cycle: at most 8 bursts in flight per direction, one beat
    // per cycle, no added latency (the model describes the core with memory at full speed).
    void drive() {
        P(m_axi___05Farready) = reads_.size() < 8;
        P(m_axi___05Fawready) = writes_.size() < 8;
        P(m_axi___05Fwready) = !writes_.empty();
        P(m_axi___05Fbvalid) = pending_b_ > 0;
        P(m_axi___05Fbresp) = 0;
        P(m_axi___05Fbid) = 0;
        P(m_axi___05Frid) = 0;
        P(m_axi___05Frresp) = 0;
        if (reads_.empty()) {
            P(m_axi___05Frvalid) = 0;
            P(m_axi___05Frlast) = 0;
        } else {
            const Burst& head = reads_.front();
            P(m_axi___05Frvalid) = 1;
            P(m_axi___05Frlast) = head.beats == 1;
            uint32_t word = 0;
            for (unsigned k = 0; k < 4; k++) word |= uint32_t(peek(head.addr + k)) << (8 * k);
            P(m_axi___05Frdata) = word;
        }
    }

    uint8_t peek(uint32_t addr) const { return addr < mem_.size() ? mem_[addr] : 0; }
    void poke(uint32_t addr, uint32_t byte) {
        if (addr < mem_.size()) mem_[addr] = static_cast<uint8_t>(byte);
    }

    std::vector<uint8_t> mem_;
    std::deque<Burst> reads_, writes_;
    unsigned pending_b_ = 0;
    uint64_t cycles_ = 0;

public:
    std::unique_ptr<Vtop> top;
};

uint64_t number(const std::string& s) { return std::stoull(s, nullptr, 0); }

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " MEMORY_BYTES < script\n";
        return 2;
    }
    auto ctx = std::make_unique<VerilatedContext>();
    Harness h(number(argv[1]), ctx.get());
    std::string line;
    try {
        while (std::getline(std::cin, line)) {
            std::istringstream in(line);
            std::string cmd, a, b, c, d;
            in >> cmd >> a >> b >> c >> d;
            if (cmd.empty() || cmd[0] == '#') continue;
            if (cmd == "load") {
                h.load(a);
            } else if (cmd == "dump") {
                h.dump(a);
            } else if (cmd == "reset") {
                h.reset(static_cast<unsigned>(number(a)));
            } else if (cmd == "write") {
                h.write(static_cast<uint32_t>(number(a)), static_cast<uint32_t>(number(b)));
            } else if (cmd == "read") {
                std::printf("read %s %u\n", a.c_str(), h.read(static_cast<uint32_t>(number(a))));
            } else if (cmd == "wait") {
                uint32_t off = static_cast<uint32_t>(number(a));
                uint32_t mask = static_cast<uint32_t>(number(b));
                uint64_t every = number(c), timeout = number(d), start = h.cycles();
                auto t0 = std::chrono::steady_clock::now();
                while (h.read(off) & mask) {
                    if (h.cycles() - start > timeout) {
                        std::printf("timeout %llu\n", static_cast<unsigned long long>(h.cycles() - start));
                        return 1;
                    }
                    h.idle(every);
                }
                std::chrono::duration<double> wall = std::chrono::steady_clock::now() - t0;
                std::printf("wait %llu %.6f\n", static_cast<unsigned long long>(h.cycles() - start),
                            wall.count());
            } else {
                std::cerr << "unknown command: " << line << "\n";
                return 2;
            }
            std::fflush(stdout);
        }
    } catch (const std::exception& e) {
        std::cerr << e.what() << "\n";
        return 1;
    }
    return 0;
}
