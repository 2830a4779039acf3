"""Runtime utilities: atomic files, paths, memory, progress, the workdir lock, devices, writers."""
