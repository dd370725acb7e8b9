// A minimal assertion helper for the C++ tests (plain executables run by ctest).
#pragma once

#include <cstdlib>
#include <iostream>

#define CHECK(condition)                                                                 \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #condition "\n";    \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

#define CHECK_THROWS(expression, exception_type)                                          \
  do {                                                                                    \
    bool thrown = false;                                                                  \
    try {                                                                                 \
      (void)(expression);                                                                 \
    } catch (const exception_type&) {                                                     \
      thrown = true;                                                                      \
    }                                                                                     \
    if (!thrown) {                                                                        \
      std::cerr << __FILE__ << ":" << __LINE__ << ": expected " #exception_type " from " #expression "\n"; \
      std::exit(1);                                                                       \
    }                                                                                     \
  } while (0)
