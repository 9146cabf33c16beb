"""The eROSITA-like mock cluster generator (`hpo simulate`, docs/simulator.md).

    config      the simulator's settings (SimConfig), survey presets, dotted overrides
    response    effective area, absorption, channel counts, background spectrum
    imaging     beta-model images, the PSF, expected counts per component
    simulator   cluster draws, Poisson images, the HDF5 file of the data contract
"""
