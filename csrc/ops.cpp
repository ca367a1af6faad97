// Op schemas of the `chimera` library, declared once here. Kernels register
// per backend in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); fake kernels
// and autograd are registered from Python (chimera/ops/).
#include <Python.h>
#include <torch/library.h>

#include "cpu/isa.h"

TORCH_LIBRARY(chimera, m) {
  // --- deep clustering (csrc/common/affinity.h) ---
  // Per batch item: V^T W V (B,D,D), V^T W Y (B,D,C), Y^T W Y (B,C,C), sum(w) (B,), V^T w (B,D),
  // accumulated in one pass, float64. `target` is (B,N) int64 class indices or (B,N,C) float.
  // num_classes (of an index target) may be symbolic: torch.compile traces `target.max() + 1`.
  m.def("affinity_stats(Tensor embedding, Tensor target, Tensor? weight, SymInt num_classes) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // dL/dV = W (V (G_vv + G_vv^T) + Y G_vy^T + 1 g_vsum^T), one pass.
  m.def("affinity_stats_backward(Tensor grad_vv, Tensor grad_vy, Tensor embedding, Tensor target, Tensor? weight, Tensor? grad_vsum=None) -> Tensor");

  // --- codebook masks (csrc/common/codebook.h) ---
  // Per row of K logits: sum_k softmax(logits)_k codebook_k, or codebook[argmax] (argmax=True);
  // normalize divides by the magnitude (0 at magnitude 0). codebook is (K,) real or (K, 2), a
  // complex codebook viewed as real; the output is logits.shape[:-1] + codebook.shape[1:].
  m.def("codebook_lookup(Tensor logits, Tensor codebook, bool argmax, bool normalize) -> Tensor");
  // (d logits, d codebook), recomputing the softmax from the logits. An output not asked for in
  // output_mask is (0,) for the logits and zeros for the codebook; with argmax d logits is 0.
  m.def("codebook_lookup_backward(Tensor grad, Tensor logits, Tensor codebook, bool argmax, bool normalize, bool[2] output_mask) -> (Tensor, Tensor)");

  // --- overlap-add inverse STFT (csrc/common/overlap_add.h) ---
  // frames (..., n_frames, n_fft) -> signal (..., L): windowed, overlap-added at the hop,
  // divided by the window-sum-square envelope, trimmed like torch.istft (center, length).
  m.def("overlap_add(Tensor frames, Tensor window, int hop_length, bool center, int? length) -> Tensor");
  // Adjoint of overlap_add in `frames`: grad (..., L) -> (..., n_frames, n_fft).
  m.def("overlap_add_backward(Tensor grad, Tensor window, int hop_length, bool center, int n_frames) -> Tensor");
}

#ifdef CHIMERA_WITH_CUDA
#ifndef CHIMERA_CUDA_ARCHS  // setup.py defines it; other builds (CMake) may not
#define CHIMERA_CUDA_ARCHS "unknown"
#endif
namespace chimera {
int cuda_image_status(int device, const char** message);  // csrc/cuda/image_probe.cu
}

// cuda_image_status(device) -> (cudaError code, message): 0 when our kernels have an image
// the device can run.
static PyObject* py_cuda_image_status(PyObject*, PyObject* arg) {
  const long device = PyLong_AsLong(arg);
  if (device == -1 && PyErr_Occurred()) return nullptr;
  const char* message = "";
  const int status = chimera::cuda_image_status(static_cast<int>(device), &message);
  return Py_BuildValue("(is)", status, message);
}
#endif

// A plain Python module so `import chimera._C` loads the library and runs the
// registrations above; it carries build facts for `chimera info`, the choice of the
// CPU kernels' instruction-set path (cpu/isa.h) and, in a CUDA build, the probe above.
namespace {

PyObject* isa_tuple(bool (*keep)(chimera::cpu::Isa)) {
  using chimera::cpu::Isa;
  PyObject* out = PyList_New(0);
  for (Isa isa : {Isa::Default, Isa::Avx2, Isa::Avx512}) {
    if (!keep(isa)) continue;
    PyObject* name = PyUnicode_FromString(chimera::cpu::isa_name(isa));
    PyList_Append(out, name);
    Py_DECREF(name);
  }
  PyObject* tuple = PyList_AsTuple(out);
  Py_DECREF(out);
  return tuple;
}

PyObject* py_cpu_capability(PyObject*, PyObject*) {
  return PyUnicode_FromString(chimera::cpu::isa_name(chimera::cpu::capability()));
}

PyObject* py_supported(PyObject*, PyObject*) { return isa_tuple(&chimera::cpu::supported); }

PyObject* py_compiled(PyObject*, PyObject*) { return isa_tuple(&chimera::cpu::compiled); }

PyObject* py_set_cpu_capability(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  chimera::cpu::Isa isa;
  if (!chimera::cpu::parse_isa(name, isa)) {
    PyErr_Format(PyExc_ValueError, "CPU capability must be one of default, avx2, avx512, got '%s'", name);
    return nullptr;
  }
  if (!chimera::cpu::supported(isa)) {
    PyErr_Format(PyExc_RuntimeError, "the CPU kernels' %s path is not %s", name,
                 chimera::cpu::compiled(isa) ? "supported by this CPU" : "compiled in this build");
    return nullptr;
  }
  chimera::cpu::set_capability(isa);
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"cpu_capability", py_cpu_capability, METH_NOARGS, "instruction-set path the CPU kernels take now"},
    {"set_cpu_capability", py_set_cpu_capability, METH_O, "choose the CPU kernels' path: default, avx2 or avx512"},
    {"supported_cpu_capabilities", py_supported, METH_NOARGS, "paths compiled in and runnable on this CPU"},
    {"compiled_cpu_capabilities", py_compiled, METH_NOARGS, "paths compiled in this build"},
#ifdef CHIMERA_WITH_CUDA
    {"cuda_image_status", py_cuda_image_status, METH_O, "(cudaError, message) of our kernel image on a device"},
#endif
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" __attribute__((visibility("default"))) PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "chimera kernels (torch.ops.chimera)", -1, methods};
  PyObject* mod = PyModule_Create(&module);
  if (mod == nullptr) return nullptr;
  PyModule_AddStringConstant(mod, "torch_version", CHIMERA_TORCH_VERSION);
#ifdef CHIMERA_WITH_CUDA
  PyModule_AddIntConstant(mod, "with_cuda", 1);
  PyModule_AddStringConstant(mod, "cuda_archs", CHIMERA_CUDA_ARCHS);  // TORCH_CUDA_ARCH_LIST of the build
#else
  PyModule_AddIntConstant(mod, "with_cuda", 0);
#endif
  return mod;
}
