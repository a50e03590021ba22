/* printf of floating point: SSE registers, varargs and the libm-free path. */
#include <stdio.h>

int
main(void)
{
	double x = 1.0, sum = 0.0;
	for (int i = 1; i <= 20; i++) {
		x *= 1.5;
		sum += 1.0 / i;
		printf("%2d %12.4f %.10g %e\n", i, x, sum, x / 7.0);
	}
	float f = 3.14159f;
	printf("float %f, scaled %.3f, negative %g\n", f, f * 1e6f, -f / 3);
	return 0;
}
