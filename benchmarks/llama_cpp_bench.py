"""llama.cpp (``llama-cpp-python``) as one more library in ``generate.py``.

llama.cpp runs the shipped GGUF itself (Q4_K_M, Q8_0 embeddings) and two
requantizations of that same file made with llama.cpp's own quantize API:
F32 (every tensor dequantized: the very float32 weights keras_gemma's
float32 loads) and Q8_0 (8 bits, one scale per 32 values: the same scheme
as keras_gemma's int8, applied to the same dequantized weights). The runs
are paired with keras_gemma's dtypes by what they hold:

    keras_gemma float32  <->  llama.cpp F32
    keras_gemma int8     <->  llama.cpp Q8_0
    (no pair)                 llama.cpp Q4_K_M, the shipped file

Generation uses llama.cpp's C API directly (``llama_decode`` on a batch of
sequences, argmax of the logits in numpy), so batch 16 decodes 16 sequences
per step as the other libraries do, and no Python sampler runs per token.
Two threads, as there are two cores.
"""

import ctypes
import importlib.util
from pathlib import Path

import numpy as np

# Our dtype -> (llama.cpp file type name, llama_ftype number); None: the shipped file.
GGUF_TYPES = {"float32": ("F32", 0), "int8": ("Q8_0", 7), "q4_k_m": ("Q4_K_M", None)}
THREADS = 2
NOT_INSTALLED = "llama-cpp-python not installed (extra: keras-gemma[bench])"


def available():
    return importlib.util.find_spec("llama_cpp") is not None


def dtypes_for(requested):
    """llama.cpp runs for the requested dtypes, plus the shipped Q4_K_M file."""
    return [d for d in requested if d in GGUF_TYPES] + ["q4_k_m"]


def label(dtype):
    return f"{dtype} ({GGUF_TYPES[dtype][0]})"


def _quiet(llama_cpp):
    # llama.cpp logs every tensor it loads; keep a reference to the callback.
    @llama_cpp.llama_log_callback
    def drop(level, text, user_data):
        pass

    llama_cpp.llama_log_set(drop, ctypes.c_void_p(0))
    _quiet.callback = drop


def prepare_files(source, folder):
    """Writes ``folder``/gemma3-270m-{F32,Q8_0}.gguf from ``source`` (once)."""
    import llama_cpp

    _quiet(llama_cpp)
    llama_cpp.llama_backend_init()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"q4_k_m": str(source)}
    for dtype, (type_name, ftype) in GGUF_TYPES.items():
        if ftype is None:
            continue
        target = folder / f"gemma3-270m-{type_name}.gguf"
        if not target.is_file():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = ftype
            params.nthread = THREADS
            params.allow_requantize = True  # the source is already quantized
            partial = target.with_suffix(".partial")
            code = llama_cpp.llama_model_quantize(
                str(source).encode(), str(partial).encode(), ctypes.byref(params))
            if code != 0:
                raise RuntimeError(f"llama_model_quantize to {type_name} failed ({code})")
            partial.rename(target)
        files[dtype] = str(target)
    return files


class LlamaCppRunner:
    """generate(ids (B, L) int32, new) -> (B, new) greedy token ids, exactly."""

    def __init__(self, path, longest):
        import llama_cpp

        self.lib = llama_cpp
        _quiet(llama_cpp)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.vocabulary_size = llama_cpp.llama_vocab_n_tokens(vocab)
        self.weight_bytes = int(llama_cpp.llama_model_size(self.model))
        self.longest = longest
        self.contexts = {}
        self._context(1)  # the batch-1 context a user creates with the model

    def _context(self, batch):
        """One context per batch size: ``batch`` sequences of ``longest`` tokens."""
        if batch not in self.contexts:
            lib = self.lib
            params = lib.llama_context_default_params()
            per_sequence = -(-self.longest // 256) * 256
            params.n_ctx = batch * per_sequence
            params.n_batch = max(512, batch * 32)
            params.n_ubatch = params.n_batch
            params.n_seq_max = batch
            params.n_threads = THREADS
            params.n_threads_batch = THREADS
            context = lib.llama_init_from_model(self.model, params)
            if not context:
                raise RuntimeError(f"llama.cpp could not make a context for batch {batch}")
            self.contexts[batch] = (context, lib.llama_batch_init(params.n_batch, 0, 1))
        return self.contexts[batch]

    def _decode(self, context, batch, tokens, positions, sequences, want_logits):
        batch.n_tokens = len(tokens)
        for i, (token, position, sequence, logits) in enumerate(
                zip(tokens, positions, sequences, want_logits)):
            batch.token[i] = int(token)
            batch.pos[i] = int(position)
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = int(sequence)
            batch.logits[i] = bool(logits)
        code = self.lib.llama_decode(context, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed ({code})")

    def _argmax(self, context, index):
        pointer = self.lib.llama_get_logits_ith(context, index)
        return int(np.ctypeslib.as_array(pointer, shape=(self.vocabulary_size,)).argmax())

    def generate(self, ids, new):
        ids = np.asarray(ids)
        rows, length = ids.shape
        context, batch = self._context(rows)
        self.lib.llama_memory_clear(self.lib.llama_get_memory(context), True)
        # The prompts, all rows in one batch; logits of each row's last token.
        self._decode(context, batch, ids.reshape(-1),
                     np.tile(np.arange(length), rows), np.repeat(np.arange(rows), length),
                     np.tile(np.arange(length) == length - 1, rows))
        out = np.zeros((rows, new), "int32")
        out[:, 0] = [self._argmax(context, (r + 1) * length - 1) for r in range(rows)]
        for step in range(1, new):
            self._decode(context, batch, out[:, step - 1], [length + step - 1] * rows,
                         range(rows), [True] * rows)
            out[:, step] = [self._argmax(context, r) for r in range(rows)]
        return out
