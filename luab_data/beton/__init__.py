"""The .beton format of luab-data: one home for what writers and loaders both need.

  fields       field names and order, BetonOptions, FFCV field construction and description
  images       what an image file declares (header checks before decoding), decoding to RGB
  samples      record -> sample: labels and byproduct arrays of a block, the writer's dataset
  paths        the files of a build (the .beton, its manifest, its rejects)
  manifest     the manifest: reading it, making it, describing the source
  integrity    open-time structure checks of a file, and the manifest's checksums
  file         BetonFile: random access to samples with NumPy and OpenCV (no FFCV pipeline)
  batch_file   BatchBetonFile: whole-batch reads (the DALI source)
  ffcv_workers FFCV's writer, run in supervised processes: how any .beton gets written

Nothing here imports the loaders, the writers or the builds; they import this. Importing the
package itself imports nothing (FFCV takes seconds to import).
"""
