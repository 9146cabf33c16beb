"""eROSITA survey files: reading them and cutting them into a file of the data contract.

    esass        event files (eSASS format), the standard cuts, the cut-out WCS
    catalog      a cluster catalogue (FITS table): positions, redshifts, IDs
    cutouts      `hpo cutouts`: events and a catalogue to a data file, skipped clusters reported
    mock_survey  the simulator's photons written as such files (`hpo simulate --events`), to
                 test `hpo cutouts` on the kind of files the survey ships
"""
