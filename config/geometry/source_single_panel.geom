; Single-panel Eiger 4M layout of the CXLS source simulations (written by cxlspeaks)

panel0/min_fs = 0
panel0/max_fs = 2068
panel0/min_ss = 0
panel0/max_ss = 2162
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
