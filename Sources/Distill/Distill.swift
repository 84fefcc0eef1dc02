// Distill: the HDF5 feature cache (HDF5.swift, CacheSchema.swift, FeatureCache.swift, CacheReader.swift,
// Augment.swift, CacheTeacher.swift); students, trainer, evaluator, exporter and the YAML config
// arrive with issues 5–6.
import Layers
import SegmentAnything
import Tensor
