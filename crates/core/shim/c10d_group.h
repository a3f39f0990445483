// The process group handle shared by the Gloo shim (c10d.cpp), the reducer and the
// CUDA shim library (shim-cuda/cuda.cpp, NCCL), so collectives work on either backend.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>
#include <cstring>
#include <stdexcept>
#include <string>

// Which ranks reached a collective that timed out. Nothing is written while collectives
// succeed: each rank counts the collectives it waits on (the same sequence on every rank,
// as every rank issues the same collectives in the same order), and only a rank whose wait
// times out writes "arrived/<sequence>/<rank>" to the store, with the kind of collective it
// waits in, then gives the others that reached the same collective (and so time out at about
// the same moment) a grace period to write theirs. The ranks without a key never got there;
// a rank whose kind differs is in another call (one process saving a checkpoint while the
// others go on into backward).
struct AccArrivals {
  c10::intrusive_ptr<c10d::Store> store;
  int rank;
  int world_size;
  std::atomic<int64_t> sequence{0};

  AccArrivals(c10::intrusive_ptr<c10d::Store> s, int r, int w) : store(std::move(s)), rank(r), world_size(w) {}

  // "; ranks 2, 3 did not reach this collective (#17) within Ns of this rank's timeout",
  // or, when every rank reached it, whether they wait in different kinds (`different`).
  std::string absent(int64_t seq, std::chrono::milliseconds grace, const std::string& kind) const {
    try {
      const std::string prefix = "arrived/" + std::to_string(seq) + "/";
      store->set(prefix + std::to_string(rank), std::vector<uint8_t>(kind.begin(), kind.end()));
      std::vector<int> missing;
      const auto deadline = std::chrono::steady_clock::now() + grace;
      do {
        missing.clear();
        for (int r = 0; r < world_size; r++) {
          if (r != rank && !store->check({prefix + std::to_string(r)})) missing.push_back(r);
        }
        if (missing.empty()) return different(prefix, seq, kind);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      } while (std::chrono::steady_clock::now() < deadline);
      std::string names;
      for (size_t i = 0; i < missing.size(); i++) names += (i == 0 ? "" : ", ") + std::to_string(missing[i]);
      const auto seconds = std::to_string(grace.count() / 1000) + "." + std::to_string(grace.count() % 1000 / 100);
      return std::string("; rank") + (missing.size() > 1 ? "s " : " ") + names + " did not reach this collective (#" +
             std::to_string(seq) + " on every rank) within " + seconds + " s of this rank's timeout";
    } catch (const std::exception& e) {
      std::string reason = e.what();
      return "; the store could not say which ranks reached it (" + reason.substr(0, reason.find('\n')) + ")";
    } catch (...) {
      return "";
    }
  }

  // "; rank 1 waits in ALLREDUCE where this rank waits in ALLGATHER ...", or "" when
  // every rank waits in the same kind of collective.
  std::string different(const std::string& prefix, int64_t seq, const std::string& kind) const {
    std::string others;
    for (int r = 0; r < world_size; r++) {
      if (r == rank) continue;
      const auto bytes = store->get(prefix + std::to_string(r));
      const std::string theirs(bytes.begin(), bytes.end());
      if (theirs != kind) others += (others.empty() ? "" : ", ") + std::string("rank ") + std::to_string(r) + " waits in " + theirs;
    }
    if (others.empty()) return "";
    return "; " + others + " where this rank waits in " + kind + " (collective #" + std::to_string(seq) +
           "): the processes are not making the same calls in the same order (is a call that every process must make, "
           "such as saveState, saveModel or gather, made on some processes only?)";
  }
};

struct AccGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  // Gloo's wait blocks the CPU until done (with the timeout); NCCL's only orders the
  // current CUDA stream after the collective, and its watchdog enforces the timeout.
  bool blocking_wait;
  // Shared with reducers, which wait on the same group's collectives.
  std::shared_ptr<AccArrivals> arrivals;
};

// A listening socket bound to `host` itself (127.0.0.1 for a single-machine run, the
// MASTER_ADDR given for several machines). Left to itself, the TCPStore server listens
// on every interface, IPv4 and IPv6, so any host that reaches the port can talk to it.
inline int acc_listen_on(const char* host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string where = std::string(host) + ":" + std::to_string(port);
  const int resolved = getaddrinfo(host, std::to_string(port).c_str(), &hints, &found);
  if (resolved != 0) {
    throw std::runtime_error("cannot resolve the rendezvous address " + where + ": " + gai_strerror(resolved));
  }
  std::string failure = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      failure = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0) {
      freeaddrinfo(found);
      return fd;
    }
    failure = errno == EADDRINUSE ? "the port is already in use" : std::strerror(errno);
    close(fd);
  }
  freeaddrinfo(found);
  throw std::runtime_error("cannot listen for the rendezvous on " + where + ": " + failure);
}

// How long meeting the other processes may take: at least 60 s, whatever the collectives'
// timeout. Ranks that start a few seconds apart (loading a large script on a busy machine)
// must not fail a run whose collectives are meant to time out quickly.
inline std::chrono::milliseconds acc_rendezvous_timeout(std::chrono::milliseconds collective_timeout) {
  return std::max(collective_timeout, std::chrono::milliseconds(60000));
}

// The rendezvous store at host:port (rank 0 serves it, listening on host only),
// prefixed for the default group; its waits get the rendezvous timeout.
inline c10::intrusive_ptr<c10d::Store> acc_rendezvous(const char* host, int port, int rank, int world_size,
                                                      std::chrono::milliseconds collective_timeout) {
  const auto timeout = acc_rendezvous_timeout(collective_timeout);
  c10d::TCPStoreOptions options;
  if (rank == 0) options.masterListenFd = acc_listen_on(host, port);
  options.port = static_cast<std::uint16_t>(port);
  options.isServer = rank == 0;
  options.numWorkers = world_size;
  options.waitWorkers = false;
  options.timeout = timeout;
  auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
  return c10::make_intrusive<c10d::PrefixStore>("default_pg/", store);
}

// A failure the missing ranks explain: this rank's timeout, or a peer that gave up on the
// same collective after its own timeout and closed the connection.
inline bool acc_is_stall(const char* message) {
  std::string lower(message);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* sign : {"timed out", "timeout", "connection closed", "connection reset"}) {
    if (lower.find(sign) != std::string::npos) return true;
  }
  return false;
}

// Gloo's wait blocks the CPU until done (with the timeout); NCCL's orders the current stream.
// A blocking wait that times out (or whose peer timed out) names the ranks that never reached
// the collective. `poll` (an explicit collective, whose result the caller reads at once) makes
// an NCCL wait block too, polling until the collective completes or the timeout passes, so
// that a stalled rank is named here rather than by NCCL's watchdog tearing the process down
// (the group gives the watchdog a longer timeout).
inline void acc_wait(const c10::intrusive_ptr<c10d::Work>& work, bool blocking, std::chrono::milliseconds timeout,
                     AccArrivals* arrivals, bool poll = false) {
  const int64_t seq = arrivals != nullptr ? arrivals->sequence.fetch_add(1) : -1;
  if (!blocking) {
    work->wait();
    if (!poll || arrivals == nullptr) return;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!work->isCompleted()) {
      if (std::chrono::steady_clock::now() > deadline) {
        const auto grace = std::min(timeout, std::chrono::milliseconds(5000));
        const auto ms = timeout.count();
        throw std::runtime_error("collective timed out after " + std::to_string(ms / 1000) + "." +
                                 std::to_string(ms % 1000 / 100) + " s" + arrivals->absent(seq, grace, c10d::opTypeToString(work->retrieveOpType())));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (auto failure = work->exception()) std::rethrow_exception(failure);
    return;
  }
  try {
    work->wait(timeout);
  } catch (const std::exception& e) {
    if (arrivals == nullptr || !acc_is_stall(e.what())) throw;
    const auto grace = std::min(timeout, std::chrono::milliseconds(5000));
    // The first line only: c10's messages go on with a backtrace, which callers drop.
    const std::string message = e.what();
    throw std::runtime_error(message.substr(0, message.find('\n')) + arrivals->absent(seq, grace, c10d::opTypeToString(work->retrieveOpType())));
  }
}
