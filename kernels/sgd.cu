// torch.optim.SGD's update for one parameter, fused into a single pass:
//   d = g + wd p
//   with momentum: b = init ? d : mu b + (1 - dampening) d;  d = nesterov ? d + mu b : b
//   p -= lr d
// `buffer` is only touched when has_momentum. 1-d grid.

// The scalar parameters, passed by value after the buffers; mirrored by
// `SgdParams` in src/backend/cuda/sgd.rs (layout checked at compile time).
struct SgdParams {
  float lr, momentum, dampening, weight_decay;
  int has_momentum, initialize_buffer, nesterov, n;
};

extern "C" __global__ void sgd_step(float* param, const float* grad, float* buffer, const SgdParams sp) {
  const float lr = sp.lr, momentum = sp.momentum, dampening = sp.dampening, weight_decay = sp.weight_decay;
  const int has_momentum = sp.has_momentum, initialize_buffer = sp.initialize_buffer, nesterov = sp.nesterov;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < sp.n; i += gridDim.x * blockDim.x) {
    const float p = param[i];
    float d = grad[i];
    if (weight_decay != 0.0f) d += weight_decay * p;
    if (has_momentum) {
      const float b = initialize_buffer ? d : momentum * buffer[i] + (1.0f - dampening) * d;
      buffer[i] = b;
      d = nesterov ? d + momentum * b : b;
    }
    param[i] = p - lr * d;
  }
}
