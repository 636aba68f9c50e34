// The launcher of the CPU emulation (cuda_on_cpu.h): one process launches one kernel of the kernel file it was
// compiled with, as `<binary> <kernel> <grid> <block> <argument>…` (grid `X` or `XxY`: a 1-D or 2-D grid), the
// arguments in the kernel's order:
//
// * a pointer parameter takes `in:PATH` (the file's bytes: an input), `out:COUNT:PATH` (COUNT elements of the
//   pointee type, every byte 0xFF — NaN for floats — written to PATH after the launch: an output must be written
//   in full, as on the GPU where it comes uninitialised) or `inout:PATH` (read, then written back);
// * a `const unsigned long long*` parameter may instead take `table:PATH,PATH,…`: a device-side table of buffer
//   addresses (a multi-tensor launch), each file read into a buffer of its own, its address in the table, and
//   written back after the launch;
// * a scalar parameter takes its value as text (`strtoul`/`strtol`/`strtof`/`strtod`: Rust's `{}` formatting of
//   f32/f64 round-trips exactly).
//
// The parameter types come from the kernel's own declaration (template deduction on the function pointer), so the
// driver cannot disagree with the kernel's signature. The launch: one std::thread per thread of the block, each
// running the blocks 0 … grid−1 in order with a barrier between blocks — blocks never overlap, threads of a block
// run concurrently and meet at __syncthreads().
//
// The test generates the translation unit:
//   #include "kernels/<op>.cu"
//   #include "driver.h"
//   int main(int argc, char** argv) { return cuda_on_cpu::run(argc, argv, {ERC_KERNEL(k1), ERC_KERNEL(k2)}); }
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

namespace cuda_on_cpu {

struct Buffer {
    std::vector<unsigned char> bytes;
    std::string save_to;  // empty: an input only
};

struct Arguments {
    std::vector<std::string> items;
    size_t next = 0;
    std::vector<std::unique_ptr<Buffer>> buffers;

    const std::string& take() {
        if (next >= items.size()) throw std::runtime_error("too few arguments for the kernel");
        return items[next++];
    }
};

inline std::vector<unsigned char> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_file(const std::string& path, const std::vector<unsigned char>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + path);
}

template <class T>
T parse_number(const std::string& text) {
    errno = 0;
    char* end = nullptr;
    T value;
    if constexpr (std::is_same_v<T, float>) {
        value = std::strtof(text.c_str(), &end);
    } else if constexpr (std::is_same_v<T, double>) {
        value = std::strtod(text.c_str(), &end);
    } else if constexpr (std::is_unsigned_v<T>) {
        if (!text.empty() && text[0] == '-') throw std::runtime_error("negative value for an unsigned parameter: " + text);
        const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
        value = static_cast<T>(v);
        if (static_cast<unsigned long long>(value) != v) throw std::runtime_error("out of range: " + text);
    } else {
        const long long v = std::strtoll(text.c_str(), &end, 10);
        value = static_cast<T>(v);
        if (static_cast<long long>(value) != v) throw std::runtime_error("out of range: " + text);
    }
    if (errno != 0 || end == text.c_str() || *end != '\0') throw std::runtime_error("not a number: " + text);
    return value;
}

template <class P>
P parse_pointer(Arguments& args) {
    using Element = std::remove_const_t<std::remove_pointer_t<P>>;
    const std::string& text = args.take();
    auto buffer = std::make_unique<Buffer>();
    if (text.rfind("table:", 0) == 0) {
        if constexpr (!std::is_same_v<Element, unsigned long long>) {
            throw std::runtime_error("table: is for `const unsigned long long*` parameters, got " + text);
        } else {
            // every listed buffer, then the table of their addresses
            std::vector<unsigned long long> addresses;
            size_t from = 6;
            while (from <= text.size()) {
                size_t comma = text.find(',', from);
                if (comma == std::string::npos) comma = text.size();
                auto entry = std::make_unique<Buffer>();
                entry->save_to = text.substr(from, comma - from);
                entry->bytes = read_file(entry->save_to);
                if (entry->bytes.empty()) entry->bytes.reserve(16);
                addresses.push_back(reinterpret_cast<unsigned long long>(entry->bytes.data()));
                args.buffers.push_back(std::move(entry));
                from = comma + 1;
            }
            buffer->bytes.resize(addresses.size() * sizeof(unsigned long long));
            std::memcpy(buffer->bytes.data(), addresses.data(), buffer->bytes.size());
        }
    } else if (text.rfind("in:", 0) == 0) {
        buffer->bytes = read_file(text.substr(3));
    } else if (text.rfind("inout:", 0) == 0) {
        buffer->save_to = text.substr(6);
        buffer->bytes = read_file(buffer->save_to);
    } else if (text.rfind("out:", 0) == 0) {
        const size_t colon = text.find(':', 4);
        if (colon == std::string::npos) throw std::runtime_error("out:COUNT:PATH expected, got " + text);
        const size_t count = parse_number<size_t>(text.substr(4, colon - 4));
        buffer->save_to = text.substr(colon + 1);
        buffer->bytes.assign(count * sizeof(Element), 0xFF);
    } else {
        throw std::runtime_error("a pointer parameter takes in:, out: or inout:, got " + text);
    }
    if (buffer->bytes.size() % sizeof(Element) != 0) throw std::runtime_error("size of " + text + " is not a multiple of the element");
    if constexpr (!std::is_const_v<std::remove_pointer_t<P>>) {
        if (buffer->save_to.empty()) throw std::runtime_error("a non-const pointer parameter needs out: or inout:, got " + text);
    }
    // An empty buffer still needs a distinct valid address for the sanitizers: give it one element of room.
    if (buffer->bytes.empty()) buffer->bytes.reserve(sizeof(Element));
    P pointer = reinterpret_cast<P>(buffer->bytes.data());
    args.buffers.push_back(std::move(buffer));
    return pointer;
}

template <class T>
T parse(Arguments& args) {
    if constexpr (std::is_pointer_v<T>) {
        return parse_pointer<T>(args);
    } else {
        static_assert(std::is_arithmetic_v<T>, "kernel parameters are pointers or numbers");
        return parse_number<T>(args.take());
    }
}

struct Entry {
    const char* name;
    std::function<void(dim3 grid, unsigned block, Arguments& args)> launch;
};

template <class... A>
Entry entry(const char* name, void (*kernel)(A...)) {
    return Entry{name, [kernel](dim3 grid, unsigned block, Arguments& args) {
                     // Braced initialisation evaluates left to right: the arguments in the kernel's order.
                     const std::tuple<A...> values{parse<A>(args)...};
                     if (args.next != args.items.size()) throw std::runtime_error("too many arguments for the kernel");
                     blockDim.x = block;
                     gridDim = grid;
                     block_barrier.reset(block);
                     std::vector<std::thread> threads;
                     threads.reserve(block);
                     for (unsigned t = 0; t < block; ++t) {
                         threads.emplace_back([&values, kernel, grid, t] {
                             threadIdx.x = t;
                             for (unsigned by = 0; by < grid.y; ++by) {
                                 for (unsigned bx = 0; bx < grid.x; ++bx) {
                                     blockIdx.x = bx;
                                     blockIdx.y = by;
                                     std::apply(kernel, values);
                                     block_barrier.wait();  // the block is done before any thread starts the next
                                 }
                             }
                         });
                     }
                     for (auto& thread : threads) thread.join();
                 }};
}

#define ERC_KERNEL(name) ::cuda_on_cpu::entry(#name, name)

inline int run(int argc, char** argv, std::vector<Entry> entries) {
    try {
        if (argc < 4) throw std::runtime_error("usage: <kernel> <grid> <block> <argument>...");
        const std::string name = argv[1];
        // `X` or `XxY`
        const std::string grid_text = argv[2];
        const size_t times = grid_text.find('x');
        dim3 grid;
        grid.x = parse_number<unsigned>(grid_text.substr(0, times));
        grid.y = times == std::string::npos ? 1 : parse_number<unsigned>(grid_text.substr(times + 1));
        if (grid.x == 0 || grid.y == 0 || grid.y > 65535) throw std::runtime_error("grid out of range: " + grid_text);
        const unsigned block = parse_number<unsigned>(argv[3]);
        if (block == 0 || block > 1024) throw std::runtime_error("block size out of range");
        Arguments args;
        for (int i = 4; i < argc; ++i) args.items.emplace_back(argv[i]);
        for (const auto& e : entries) {
            if (name == e.name) {
                e.launch(grid, block, args);
                for (const auto& buffer : args.buffers)
                    if (!buffer->save_to.empty()) write_file(buffer->save_to, buffer->bytes);
                return 0;
            }
        }
        throw std::runtime_error("no kernel named " + name);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "cuda_on_cpu: %s\n", e.what());
        return 2;
    }
}

}  // namespace cuda_on_cpu
