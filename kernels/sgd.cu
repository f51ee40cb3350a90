// torch.optim.SGD's update for one parameter, fused into a single pass:
//   d = g + wd p
//   with momentum: b = init ? d : mu b + (1 - dampening) d;  d = nesterov ? d + mu b : b
//   p -= lr d
// `buffer` is only touched when has_momentum. 1-d grid.
extern "C" __global__ void sgd_step(float* param, const float* grad, float* buffer, int has_momentum,
                                    int initialize_buffer, float lr, float momentum, float dampening,
                                    float weight_decay, int nesterov, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
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
