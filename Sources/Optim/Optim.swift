// Optim: AdamW, gradient-norm clipping and learning-rate schedules.
import Layers
import Tensor
