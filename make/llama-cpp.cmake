# Included by llama.cpp's CMakeLists right after its project() call (CMAKE_ARGS in the Makefile),
# when pip builds llama-cpp-python from source: the engine loads only libllama and libggml*, so
# llama.cpp's "common" helpers (and their HTTP client), which llama-cpp-python forces on, are
# switched off. The CPU kernels are unchanged (GGML_NATIVE stays on).
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp: build common utils library" FORCE)
