"""Engine: what runs on the device. The train state and its optimizer (`state`), the step functions
(`steps`: one step, chunks of steps, a rolled epoch, evaluation sums), augmentation inside the step
(`augment`), several runs as one vmapped program (`vmap`), devices and meshes (`devices`), where the
training images live (`placement`), evaluation and prediction (`evaluation`), and the process's compiled
programs: the persistent cache (`compile_cache`), their count and cost (`costs`), glibc's malloc
(`host_memory`).

May import: `cnn.errors`, `cnn.config`, `cnn.data.spec`, `cnn.models` and each other."""
