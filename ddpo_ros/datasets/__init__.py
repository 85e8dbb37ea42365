"""Data sources: KITTI sequences, ground-truth maps, point cloud files."""
