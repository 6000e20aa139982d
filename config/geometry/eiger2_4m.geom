; Dectris EIGER2 X 4M, 75 um pixels, 2 x 4 modules of 1028 x 512, gaps masked (written by cxlspeaks)

panel0/min_fs = 0
panel0/max_fs = 2067
panel0/min_ss = 0
panel0/max_ss = 2161
panel0/corner_x = -1034.0
panel0/corner_y = -1081.0
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

bad_gap_fs0/min_fs = 1028
bad_gap_fs0/max_fs = 1039
bad_gap_fs0/min_ss = 0
bad_gap_fs0/max_ss = 2161
bad_gap_fs0/panel = panel0

bad_gap_ss0/min_fs = 0
bad_gap_ss0/max_fs = 2067
bad_gap_ss0/min_ss = 512
bad_gap_ss0/max_ss = 549
bad_gap_ss0/panel = panel0

bad_gap_ss1/min_fs = 0
bad_gap_ss1/max_fs = 2067
bad_gap_ss1/min_ss = 1062
bad_gap_ss1/max_ss = 1099
bad_gap_ss1/panel = panel0

bad_gap_ss2/min_fs = 0
bad_gap_ss2/max_fs = 2067
bad_gap_ss2/min_ss = 1612
bad_gap_ss2/max_ss = 1649
bad_gap_ss2/panel = panel0
