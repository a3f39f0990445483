// The thread-local last error of the shim.
#include "shim.h"

static thread_local std::string last_error;

void acc::set_last_error(const std::string& message) { last_error = message; }

extern "C" const char* acc_last_error() { return last_error.c_str(); }
