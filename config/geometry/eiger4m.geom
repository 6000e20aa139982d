; Dectris Eiger 4M, 75 um pixels, module gaps masked (written by cxlspeaks)

panel0/min_fs = 0
panel0/max_fs = 2069
panel0/min_ss = 0
panel0/max_ss = 2166
panel0/corner_x = -1034.0
panel0/corner_y = -1531.0
panel0/fs = +1.000000x +0.000000y +0.000000z
panel0/ss = +0.000000x +1.000000y +0.000000z
panel0/res = 13333.333333333334
panel0/clen = 0.15
panel0/coffset = 0.0
panel0/adu_per_photon = 1.0
panel0/data = /entry/data/data
panel0/dim0 = %
panel0/dim1 = ss
panel0/dim2 = fs

bad_gap_fs0/min_fs = 1030
bad_gap_fs0/max_fs = 1039
bad_gap_fs0/min_ss = 0
bad_gap_fs0/max_ss = 2166
bad_gap_fs0/panel = panel0

bad_gap_ss0/min_fs = 0
bad_gap_ss0/max_fs = 2069
bad_gap_ss0/min_ss = 514
bad_gap_ss0/max_ss = 550
bad_gap_ss0/panel = panel0

bad_gap_ss1/min_fs = 0
bad_gap_ss1/max_fs = 2069
bad_gap_ss1/min_ss = 1065
bad_gap_ss1/max_ss = 1101
bad_gap_ss1/panel = panel0

bad_gap_ss2/min_fs = 0
bad_gap_ss2/max_fs = 2069
bad_gap_ss2/min_ss = 1616
bad_gap_ss2/max_ss = 1652
bad_gap_ss2/panel = panel0
