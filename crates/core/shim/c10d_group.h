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
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>

struct AccGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  // Gloo's wait blocks the CPU until done (with the timeout); NCCL's only orders the
  // current CUDA stream after the collective, and its watchdog enforces the timeout.
  bool blocking_wait;
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

// The rendezvous store at host:port (rank 0 serves it, listening on host only),
// prefixed for the default group.
inline c10::intrusive_ptr<c10d::Store> acc_rendezvous(const char* host, int port, int rank, int world_size,
                                                      std::chrono::milliseconds timeout) {
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

// Gloo's wait blocks the CPU until done (with the timeout); NCCL's orders the current stream.
inline void acc_wait(const c10::intrusive_ptr<c10d::Work>& work, bool blocking, std::chrono::milliseconds timeout) {
  if (blocking) {
    work->wait(timeout);
  } else {
    work->wait();
  }
}
